#!/usr/bin/env python3
"""Where a decode step's time goes, from an Nsight Systems kernel trace.

Input: the CSV of `nsys stats --report cuda_gpu_trace --format csv` for a run of `apus bench
latency` recorded with `--cuda-graph-trace=node` (kernels inside CUDA graphs appear one by one).
A decode step ends with the token draw (sample_kernel); the last --steps steps are summarised:
the time from draw to draw, the step's wall time (first kernel start to draw end), the kernels' summed duration, and per kernel
(name without template arguments, grid, and the kernel before it, which tells apart layers of the
same shape such as o_proj after attention and down_proj after SiLU) the mean duration and the mean
gap from the end of the kernel before it (negative: the launch overlapped it, PDL).

usage: decode_trace_summary.py TRACE.csv [--steps 64]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def short(name):
    name = re.sub(r"\(.*$", "", name.replace("(anonymous namespace)::", ""))  # parameters
    depth, out = 0, []
    for ch in name:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    name = name.split("::")[-1]
    return name.replace("void ", "")


def column(header, *keys):
    for i, h in enumerate(header):
        if any(h.startswith(k) for k in keys):
            return i
    sys.exit(f"no column {keys} in {header}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    with open(args.trace, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    ci_start, ci_dur = column(header, "Start"), column(header, "Duration")
    ci_gx, ci_name = column(header, "GrdX"), column(header, "Name")
    kernels = []
    for r in rows:
        if not r[ci_gx]:  # memcpy / memset rows have no grid
            continue
        kernels.append((int(r[ci_start]), int(r[ci_dur]), int(r[ci_gx]), short(r[ci_name])))
    kernels.sort()
    ends = [i for i, k in enumerate(kernels) if k[3] == "sample_kernel"]
    if len(ends) < args.steps + 2:
        sys.exit(f"only {len(ends)} draws in the trace")
    ends = ends[-(args.steps + 1):]
    stats = defaultdict(lambda: [0, 0.0, 0.0])  # count, duration, gap
    wall = busy = cycle = 0.0
    for a, b in zip(ends, ends[1:]):
        step = kernels[a + 1:b + 1]
        cycle += kernels[b][0] + kernels[b][1] - (kernels[a][0] + kernels[a][1])
        wall += step[-1][0] + step[-1][1] - step[0][0]
        prev = kernels[a]
        for k in step:
            busy += k[1]
            key = (k[3], k[2], prev[3])
            s = stats[key]
            s[0] += 1
            s[1] += k[1]
            s[2] += k[0] - (prev[0] + prev[1])
            prev = k
    n = args.steps
    print(f"{args.trace}: last {n} decode steps")
    print(f"draw to draw {cycle / n / 1e3:.1f} us; step {wall / n / 1e3:.1f} us wall, {busy / n / 1e3:.1f} us of kernels, "
          f"{(wall - busy) / n / 1e3:.1f} us between them (negative: overlapped)")
    print(f"{'kernel':28} {'grid':>6} {'after':24} {'calls':>6} {'us each':>8} {'gap us':>7} {'us/step':>8}")
    for key, (c, d, g) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        print(f"{key[0][:28]:28} {key[1]:6d} {key[2][:24]:24} {c / n:6.1f} {d / c / 1e3:8.2f} {g / c / 1e3:7.2f} "
              f"{d / n / 1e3:8.1f}")


if __name__ == "__main__":
    main()
