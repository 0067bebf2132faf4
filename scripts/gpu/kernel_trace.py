#!/usr/bin/env python3
"""Where a decode step's device time goes, from a kernel trace (scripts/gpu/kernel_trace.c).

usage: kernel_trace.py TRACE.tsv [--delimiter REGEX] [--skip N] [--top N] [--whole]

Steps are the intervals between consecutive kernels whose name matches --delimiter (default:
MLX's argmax, one a decode step); the last contiguous run of intervals within 3x the median is
the decode run, of which the first --skip are dropped. Prints, per step: wall time, the time the
device had a kernel running (the union of their intervals), the gaps; then each kernel kind
(name, grid, block) with its calls a step, mean time and share of the step. --whole: each
kernel kind's calls and mean time over the whole trace instead (e.g. examples/cuda_kernels).
"""
import argparse
import re
import shutil
import subprocess
import statistics
from collections import defaultdict


def read(path):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 13:
                continue
            rows.append((int(p[1]), int(p[2]), p[0], tuple(p[5:11]), int(p[11]), p[12]))
    rows.sort()
    return rows


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool:
        return {n: n for n in names}
    names = sorted(names)
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def short(name, width=70):
    name = re.sub(r"\(.*$", "", name)  # drop the argument list
    return name if len(name) <= width else name[: width - 3] + "..."


def by_kind(rows):
    """Each kernel kind's (short name, grid and block, registers) durations, in ns."""
    names = demangle({r[5] for r in rows})
    kinds = defaultdict(list)
    for r in rows:
        kinds[(short(names[r[5]]), r[3], r[4])].append(r[1] - r[0])
    return sorted(kinds.items(), key=lambda kv: -sum(kv[1]))


def dims_text(dims):
    return "x".join(dims[:3]) + " / " + "x".join(dims[3:])


def union(spans):
    total, end = 0, None
    for s, e in sorted(spans):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--delimiter", default="arg_reduce")
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--whole", action="store_true")
    a = ap.parse_args()
    rows = read(a.trace)
    if a.whole:
        return whole(rows, a.top)
    delim = re.compile(a.delimiter)
    marks = [r[0] for r in rows if delim.search(r[5])]
    if len(marks) < a.skip + 3:
        print(f"{len(rows)} records, {len(marks)} matching {a.delimiter!r}: too few steps")
        return
    gaps = [b - x for x, b in zip(marks, marks[1:])]
    med = statistics.median(gaps)
    run = []
    for i in range(len(gaps) - 1, -1, -1):
        if gaps[i] > 3 * med:
            break
        run.append(i)
    run = sorted(run)[a.skip:]
    t0, t1 = marks[run[0]], marks[run[-1] + 1]
    steps = len(run)
    inside = [r for r in rows if t0 <= r[0] < t1]
    wall = (t1 - t0) / steps / 1e3
    busy = union([(r[0], min(r[1], t1)) for r in inside]) / steps / 1e3
    kernel_sum = sum(r[1] - r[0] for r in inside) / steps / 1e3
    between = [b[0] - x[1] for x, b in zip(inside, inside[1:])]
    idle_small = sum(g for g in between if 0 < g <= 5000) / steps / 1e3
    idle_big = sum(g for g in between if g > 5000) / steps / 1e3
    print(f"decode steps traced: {steps}; a step: wall {wall:.1f} us, device busy {busy:.1f} us "
          f"({100 * busy / wall:.0f}%), kernels {len(inside) / steps:.0f} (sum {kernel_sum:.1f} us)")
    print(f"idle between kernels a step: {idle_small:.1f} us in gaps <= 5 us, {idle_big:.1f} us in "
          f"longer gaps; median gap {statistics.median(between) / 1e3:.2f} us")
    print()
    print("| kernel | grid / block | regs | calls a step | mean us | us a step | share |")
    print("|---|---|---|---|---|---|---|")
    ranked = by_kind(inside)
    for (name, dims, regs), d in ranked[: a.top]:
        per = sum(d) / steps / 1e3
        print(f"| `{name}` | {dims_text(dims)} | {regs} | {len(d) / steps:.2f} | {sum(d) / len(d) / 1e3:.2f} "
              f"| {per:.1f} | {100 * per / wall:.1f}% |")
    rest = ranked[a.top:]
    if rest:
        per = sum(sum(d) for _, d in rest) / steps / 1e3
        print(f"| {len(rest)} more kinds | | | | | {per:.1f} | {100 * per / wall:.1f}% |")


def whole(rows, top):
    print("| kernel | grid / block | regs | calls | mean us | median us |")
    print("|---|---|---|---|---|---|")
    for (name, dims, regs), d in by_kind(rows)[:top]:
        print(f"| `{name}` | {dims_text(dims)} | {regs} | {len(d)} | {sum(d) / len(d) / 1e3:.2f} "
              f"| {statistics.median(d) / 1e3:.2f} |")


if __name__ == "__main__":
    main()
