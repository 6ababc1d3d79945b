#!/usr/bin/env python3
"""Where a profiled step's time goes: `dedpo_bench_dpo_step --trace FILE`, summed by op.

    trace_summary.py FILE [--top N]            ops by self time (their time minus the ops they called)
    trace_summary.py FILE --callers OP [--depth D]   OP's time by its chain of callers
    trace_summary.py FILE --shapes OP          OP's time by the shapes of its inputs

Ops nest per thread by their start and end; an op that calls itself (an autocast wrapper and the
kernel it redispatches to) counts once in the inclusive column.
"""
import argparse
import collections
import json
import sys


def load(path):
    try:
        with open(path) as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"trace_summary.py: cannot read {path}: {e}")
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if not complete:
        sys.exit(f"trace_summary.py: {path} holds no complete ('ph': 'X') events")
    by_thread = collections.defaultdict(list)
    for e in complete:
        by_thread[e.get("tid")].append(e)
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))  # a parent before the children it starts with
    return by_thread


def walk(by_thread):
    """Yields (event, its open callers innermost last) in start order, per thread."""
    for events in by_thread.values():
        open_ops = []
        for e in events:
            while open_ops and open_ops[-1]["ts"] + open_ops[-1]["dur"] <= e["ts"]:
                open_ops.pop()
            yield e, open_ops
            open_ops.append(e)


def tally(by_thread, key_of):
    """Self time, inclusive time and calls per key_of(op) (None: the op is not tallied). An op's
    self time is its time minus its direct children's; an op inside another of its name (an
    autocast wrapper and the kernel it redispatches to) adds nothing to the inclusive time again."""
    self_us, inclusive_us, calls = collections.Counter(), collections.Counter(), collections.Counter()
    keys = {}  # id(op) -> its key, for its children to subtract from
    for e, callers in walk(by_thread):
        if callers and keys.get(id(callers[-1])) is not None:
            self_us[keys[id(callers[-1])]] -= e["dur"]
        key = keys[id(e)] = key_of(e)
        if key is None:
            continue
        self_us[key] += e["dur"]
        calls[key] += 1
        if all(c["name"] != e["name"] for c in callers):
            inclusive_us[key] += e["dur"]
    return self_us, inclusive_us, calls


def self_times(by_thread, top):
    self_us, inclusive_us, calls = tally(by_thread, lambda e: e["name"])
    total = sum(self_us.values())
    print(f"{total / 1e3:.1f} ms of self time over {len(by_thread)} thread(s)")
    print(f"{'self ms':>9} {'share':>6} {'calls':>6} {'incl. ms':>9}  op")
    for name, us in self_us.most_common(top):
        print(f"{us / 1e3:9.2f} {100 * us / total:5.1f}% {calls[name]:6d} {inclusive_us[name] / 1e3:9.2f}  {name}")


def callers_of(by_thread, target, depth):
    time_us, calls = collections.Counter(), collections.Counter()
    for e, callers in walk(by_thread):
        if e["name"] != target:
            continue
        chain = " < ".join(c["name"] for c in reversed(callers[-depth:])) or "(top level)"
        time_us[chain] += e["dur"]
        calls[chain] += 1
    if not time_us:
        sys.exit(f"trace_summary.py: no op named '{target}' in the trace")
    print(f"{target}: {sum(time_us.values()) / 1e3:.2f} ms in {sum(calls.values())} calls")
    for chain, us in time_us.most_common():
        print(f"{us / 1e3:9.2f} ms {calls[chain]:6d}  {chain}")


def input_shapes(op):
    """An op's input shapes as "4x8 8x2" (the trace's "Input Dims", trailing scalar arguments dropped)."""
    dims = op.get("args", {}).get("Input Dims")
    if dims is None:
        sys.exit(f"trace_summary.py: the trace holds no input shapes for '{op['name']}' "
                 "(dedpo_bench_dpo_step --trace records them)")
    while dims and not dims[-1]:
        dims = dims[:-1]
    return " ".join("x".join(str(d) for d in dim) or "-" for dim in dims)


def by_shapes(by_thread, target):
    """OP's self and inclusive time per distinct input shapes."""
    self_us, inclusive_us, calls = tally(by_thread, lambda e: input_shapes(e) if e["name"] == target else None)
    if not calls:
        sys.exit(f"trace_summary.py: no op named '{target}' in the trace")
    print(f"{target}: {sum(self_us.values()) / 1e3:.2f} ms of self time in {sum(calls.values())} calls")
    print(f"{'self ms':>9} {'calls':>6} {'incl. ms':>9}  input shapes")
    for shapes, us in self_us.most_common():
        print(f"{us / 1e3:9.2f} {calls[shapes]:6d} {inclusive_us[shapes] / 1e3:9.2f}  {shapes}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=30, help="ops to list (default 30)")
    parser.add_argument("--callers", metavar="OP", help="split OP's time by its callers instead")
    parser.add_argument("--depth", type=int, default=3, help="callers to name per chain (default 3)")
    parser.add_argument("--shapes", metavar="OP", help="split OP's time by its input shapes instead")
    args = parser.parse_args()
    if args.top < 1 or args.depth < 1:
        parser.error("--top and --depth expect a positive integer")
    by_thread = load(args.trace)
    if args.callers and args.shapes:
        parser.error("--callers and --shapes are two different splits: give one")
    if args.callers:
        callers_of(by_thread, args.callers, args.depth)
    elif args.shapes:
        by_shapes(by_thread, args.shapes)
    else:
        self_times(by_thread, args.top)


if __name__ == "__main__":
    main()
