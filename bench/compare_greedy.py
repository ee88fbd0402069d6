#!/usr/bin/env python3
"""Greedy parity of two `apus generate --json --logprobs N` runs of the same prompt (e.g. TP=1 and
TP=2 on the same dummy checkpoint).

Usage: compare_greedy.py REF.json OTHER.json [--tol 0.1]

Prints how many tokens agree and the largest |logprob| difference of the chosen tokens over the
common prefix. Where the tokens first differ, the split is accepted only if it is a near tie in the
reference: the other run's token is in the reference's top N and its log-probability is within
--tol of the reference's choice (bf16 sums in another order may swap near-equal candidates, after
which the continuations legitimately differ). Exit status 1 otherwise.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("other")
    ap.add_argument("--tol", type=float, default=0.1)
    a = ap.parse_args()
    ref, oth = (json.load(open(p)) for p in (a.ref, a.other))
    if ref["prompt_token_ids"] != oth["prompt_token_ids"]:
        sys.exit(f"{a.other}: not the same prompt as {a.ref}")
    rt, ot = ref["token_ids"], oth["token_ids"]
    n = min(len(rt), len(ot))
    same = next((i for i in range(n) if rt[i] != ot[i]), n)
    worst = 0.0
    for i in range(same):
        lr = dict(map(tuple, ref["logprobs"][i]))
        lo = dict(map(tuple, oth["logprobs"][i]))
        worst = max(worst, abs(lr[rt[i]] - lo[ot[i]]))
    line = f"{a.other}: {same}/{len(rt)} greedy tokens equal to {a.ref}; max |d logprob| {worst:.4f}"
    if same == len(rt) == len(ot):
        print(line)
        return
    if same == n:
        sys.exit(line + f"; lengths differ ({len(rt)} vs {len(ot)})")
    top = dict(map(tuple, ref["logprobs"][same]))
    gap = top[rt[same]] - top[ot[same]] if ot[same] in top else float("inf")
    line += f"; step {same}: {rt[same]} vs {ot[same]}, reference gap {gap:.4f}"
    if gap > a.tol:
        sys.exit(line + f" > {a.tol}: NOT a near tie")
    print(line + " (near tie)")


if __name__ == "__main__":
    main()
