#!/usr/bin/env python3
"""Where the instructions go: each function's own instructions in a callgrind profile, summed
by crate (the first path segment of its name; the C library's files as `libc`), per request.

    KEEP=/tmp/prof benches/callgrind.sh 2000     # keeps the profiles, one per thread
    benches/bycrate.py /tmp/prof/cg.2000-03 2000 # the worker thread's, per request

Code inlined into a caller counts for the caller's crate (most of `portcullis` below is the
`http` crate's and the standard library's code inlined into portcullis's functions).
"""
import collections
import re
import subprocess
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    profile, requests = sys.argv[1], int(sys.argv[2])
    out = subprocess.run(["callgrind_annotate", "--threshold=100", profile],
                         capture_output=True, text=True, check=True).stdout
    sums = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(\S+?):(.*)$", line)
        if not m:
            continue
        count, file, function = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        if file.startswith("./") or "libc.so" in line:
            crate = "libc"
        else:
            crate = re.split(r"::|<| ", function.lstrip("<"))[0]
        sums[crate] += count
    for crate, count in sums.most_common(14):
        print(f"{count / requests:8.0f}  {crate}")
    print(f"{sum(sums.values()) / requests:8.0f}  in all (the run with no requests not subtracted)")


if __name__ == "__main__":
    main()
