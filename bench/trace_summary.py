#!/usr/bin/env python3
"""Summarise a step trace (src/backend/cuda/trace.cu; a build with -DAPUS_CUDA_TRACE=ON).

Each block's record holds the global timer at its pdl_begin() wait (`pre`: resident, its loads before
the wait issued) and just after it (`post`: released). A kernel's wait releases once the kernel before
it has completed, so sorted by `post` the records fall into the step's kernels one after another; a
kernel's time on the critical path is from its first release to the next kernel's first release.

usage: trace_summary.py apus_trace.csv [--all]
Per kernel shape (blocks x threads, in order of first appearance): launches, mean µs on the critical
path, how long its first block had waited (lead), blocks that became resident only after the release
(late), and the spread of its releases; --all lists every launch too. Kernels with trace_mark(tag)
points (m1..m3) also get, per tag, when the last of their blocks passed it, from their first release;
those marking their entry (m0) how long after the previous kernel's release their first block
started, and how long a block took from its entry to its wait.
"""
import csv
import sys


def main():
    rows = []
    with open(sys.argv[1]) as f:
        for r in csv.DictReader(f):
            rows.append({k: int(v) for k, v in r.items()})
    rows.sort(key=lambda r: r["post"])
    launches = []
    for r in rows:
        sig = (r["grid"], r["threads"])
        cur = launches[-1] if launches else None
        if cur is None or cur["sig"] != sig or len(cur["recs"]) == sig[0]:
            launches.append({"sig": sig, "recs": []})
        launches[-1]["recs"].append(r)
    t0 = launches[0]["recs"][0]["post"]
    for i, l in enumerate(launches):
        posts = [r["post"] for r in l["recs"]]
        l["start"] = min(posts)
        l["lead"] = l["start"] - min(r["pre"] for r in l["recs"])
        l["late"] = sum(1 for r in l["recs"] if r["pre"] > l["start"])
        l["spread"] = max(posts) - l["start"]
    for i, l in enumerate(launches):
        l["dur"] = launches[i + 1]["start"] - l["start"] if i + 1 < len(launches) else None
    posts = sorted(set(r["post"] for r in rows))
    step = min((b - a for a, b in zip(posts, posts[1:])), default=0)
    span = launches[-1]["start"] - t0
    print(f"{len(rows)} blocks, {len(launches)} launches, {span / 1000:.1f} µs from the first release to the last "
          f"(timer step seen: {step} ns)")
    if "--all" in sys.argv:
        print("launch  blocks x threads  at µs  on path µs  lead µs  late  spread µs")
        for i, l in enumerate(launches):
            d = f"{l['dur'] / 1000:9.2f}" if l["dur"] is not None else "        -"
            print(f"{i:6d}  {l['sig'][0]:6d} x {l['sig'][1]:4d}  {(l['start'] - t0) / 1000:8.2f}  {d}  "
                  f"{l['lead'] / 1000:7.2f}  {l['late']:4d}  {l['spread'] / 1000:8.2f}")
    by = {}
    for l in launches:
        by.setdefault(l["sig"], []).append(l)
    print("blocks x threads  launches  on path µs (mean)  lead µs  late blocks  spread µs  total µs")
    for sig, ls in by.items():
        ds = [l["dur"] for l in ls if l["dur"] is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
        lead, late, spread = (mean([l[k] for l in ls]) for k in ("lead", "late", "spread"))
        print(f"{sig[0]:6d} x {sig[1]:4d}  {len(ls):8d}  {mean(ds) / 1000:17.2f}  {lead / 1000:7.2f}"
              f"  {late:11.1f}  {spread / 1000:9.2f}  {sum(ds) / 1000:8.1f}")
    for i, l in enumerate(launches):  # entries (m0): launch latency and preamble
        ent = [r for r in l["recs"] if r.get("m0", 0)]
        if i > 0 and ent:
            l["entry"] = min(r["m0"] for r in ent) - launches[i - 1]["start"]
            l["preamble"] = sorted(r["pre"] - r["m0"] for r in ent)[len(ent) // 2]
    for sig, ls in by.items():
        es = [l for l in ls if "entry" in l]
        if es:
            entry, pre = (sum(l[k] for l in es) / len(es) / 1000 for k in ("entry", "preamble"))
            print(f"    {sig[0]} x {sig[1]}: first block entered {entry:.2f} µs after the previous kernel's release; "
                  f"entry to its wait {pre:.2f} µs (median block)")
        for tag in ("m1", "m2", "m3"):
            last = [max(r[tag] for r in l["recs"]) - l["start"] for l in ls if any(r.get(tag, 0) for r in l["recs"])]
            if last:
                at = sum(last) / len(last) / 1000
                print(f"    {sig[0]} x {sig[1]}: last block at {tag} {at:.2f} µs after the release")


if __name__ == "__main__":
    main()
