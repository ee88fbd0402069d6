#!/usr/bin/env python3
"""Writes a qwen.tiktoken (Qwen v1's vocabulary file: base64 of each token's bytes, a space, its rank,
one per line) from a later Qwen tokenizer.json, for tests: Qwen1.5 / 2 / 2.5 / 3 kept Qwen v1's
byte-level BPE vocabulary unchanged (ids 0..151642 = the tiktoken ranks, merges in rank order; the
special tokens start at 151643 in both), and tokenizer.json spells each token's bytes in GPT-2's
printable byte alphabet. Standard library only.

    python3 tools/tokenizer/qwen_tiktoken.py third_party/tokenizers/qwen3/tokenizer.json OUT/qwen.tiktoken
"""
import base64
import json
import sys

REGULAR = 151643  # Qwen's SPECIAL_START_ID: ranks below it are the BPE vocabulary


def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode()."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main(src, dst):
    with open(src, encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    dec = byte_decoder()
    by_id = {i: t for t, i in vocab.items() if i < REGULAR}
    if sorted(by_id) != list(range(REGULAR)):
        sys.exit(f"{src}: ids 0..{REGULAR - 1} are not all regular tokens; not a Qwen vocabulary")
    with open(dst, "w", encoding="ascii") as out:
        for i in range(REGULAR):
            data = bytes(dec[c] for c in by_id[i])
            out.write(base64.b64encode(data).decode("ascii") + " " + str(i) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
