#!/usr/bin/env python3
"""The linker's map of the release build (`AGENTSD_LINK_MAP`), read for the
link order (see order/collect):

    order/map.py list BINARY MAP CALLGRIND...   the functions that ran, in address order
    order/map.py check MAP ORDER                 fails unless 95 % of ORDER is in MAP
"""
import bisect, re, sys


def sections(linkmap):
    """The map's input sections of code, by address: starts, ends, names.
    A line is "VMA LMA Size Align  file:(.text.NAME)"; cold and hot code is
    in ".text.unlikely.NAME" and the like."""
    starts, ends, names = [], [], []
    for line in open(linkmap):
        m = re.match(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text\.(?:(?:unlikely|hot|startup|exit|split)\.)?(\S+)\)$", line)
        if m and int(m.group(2), 16):
            starts.append(int(m.group(1), 16))
            ends.append(int(m.group(1), 16) + int(m.group(2), 16))
            names.append(m.group(3))
    order = sorted(range(len(starts)), key=starts.__getitem__)
    return ([v[i] for i in order] for v in (starts, ends, names))


def check(linkmap, listed):
    """A version bump or a dependency update renames the functions: the
    list, stale, would silently give back the idle daemon's memory."""
    _, _, names = sections(linkmap)
    names = set(names)
    wanted = open(listed).read().split()
    found = sum(n in names for n in wanted)
    print(f"{found} of {len(wanted)} functions of {listed} are in this build")
    if found * 100 < len(wanted) * 95:
        sys.exit(f"{listed} is stale: run order/collect")


def ran(binary, linkmap, profiles):
    """Every function of the binary one of whose instructions callgrind saw
    run (the binary has no symbols: callgrind names its code by address,
    the binary's own, which the map names)."""
    starts, ends, names = sections(linkmap)

    def function(at):
        i = bisect.bisect_right(starts, at) - 1
        return i if i >= 0 and at < ends[i] else None

    hit, calls, entered = set(), 0, 0
    for path in profiles:
        objects, ob, cob = {}, None, None
        for line in open(path):
            m = re.match(r"(c?)ob=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(3):
                    objects[m.group(2)] = m.group(3)
                if m.group(1):
                    cob = objects.get(m.group(2))
                else:
                    ob = objects.get(m.group(2))
                continue
            m = re.match(r"calls=\d+ 0x([0-9a-f]+)", line)
            if m:
                # A call into the binary lands on the start of a function.
                if (cob or ob) == binary:
                    calls += 1
                    i = function(int(m.group(1), 16))
                    entered += i is not None and starts[i] == int(m.group(1), 16)
                cob = None
                continue
            m = re.match(r"0x([0-9a-f]+) ", line)
            if m and ob == binary:
                i = function(int(m.group(1), 16))
                if i is not None:
                    hit.add(i)
    # If calls do not land on functions' starts, the addresses are not the
    # map's, and the list would be noise.
    if calls < 1000 or entered < 0.95 * calls:
        sys.exit(f"of {calls} calls into the binary only {entered} land on a function's start in the map")
    for i in sorted(hit):
        print(names[i])
    size = sum(ends[i] - starts[i] for i in hit) / 2**20
    total = sum(e - s for s, e in zip(starts, ends)) / 2**20
    print(f"order/agentsd.order: {len(hit)} functions ({size:.2f} MiB) of {len(names)} ({total:.2f} MiB); "
          f"{entered} of {calls} calls land on a start", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"] and len(sys.argv) == 4:
        check(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["list"] and len(sys.argv) >= 5:
        ran(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
