#!/usr/bin/env python3
"""Sums native stack samples (elfutils' eu-stack output, many dumps appended) of one thread:
how often each function is on the stack (inclusive) and at its top (self), as a poor man's
profiler of the host's side of a decode step (scripts/gpu/runtime_bench.sh hostprof)."""
import argparse
import collections
import re

FRAME = re.compile(r"^#\d+\s+0x[0-9a-f]+\s+(.*?)\s*$")
THREAD = re.compile(r"^TID (\d+):")


def short(name, width):
    """A demangled name without its Rust hash suffix, cut to `width`."""
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def samples(path, tid):
    """Each dump's stack of thread `tid` (innermost frame first)."""
    stack, current = None, None
    with open(path, errors="replace") as f:
        for line in f:
            m = THREAD.match(line)
            if m:
                if stack:
                    yield stack
                current = int(m.group(1))
                stack = [] if current == tid else None
                continue
            if line.startswith("PID "):
                if stack:
                    yield stack
                stack = None
                continue
            m = FRAME.match(line)
            if m and stack is not None:
                stack.append(m.group(1) or "??")
    if stack:
        yield stack


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stacks")
    p.add_argument("--tid", type=int, required=True, help="the thread (the main thread: the pid)")
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--width", type=int, default=150)
    args = p.parse_args()
    inclusive, leaf = collections.Counter(), collections.Counter()
    n = 0
    for stack in samples(args.stacks, args.tid):
        n += 1
        leaf[short(stack[0], args.width)] += 1
        for name in {short(s, args.width) for s in stack}:
            inclusive[name] += 1
    print(f"{n} samples of thread {args.tid}\n")
    for title, counts in (("on the stack", inclusive), ("at the top", leaf)):
        print(f"| {title} | % | function |\n|---|---|---|")
        for name, c in counts.most_common(args.top):
            print(f"| {c} | {100 * c / max(n, 1):.0f} | `{name}` |")
        print()


if __name__ == "__main__":
    main()
