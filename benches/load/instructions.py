#!/usr/bin/env python3
"""Instructions per request of a Causeway binary, counted by valgrind's callgrind: the same
count for the same binary and load whatever else the machine is doing, so a change to the
user-space path can be judged without the noise of a timed run. The kernel's share (syscalls,
loopback TCP) is not counted; `run.sh` measures the whole.

The binary runs under callgrind against the harness's nginx origins; a warm-up load runs, the
counters are zeroed, then a fixed number of requests is sent (h2load for h2, wrk-like
keep-alive HTTP/1.1 from h2load's `--h1`), the counters are dumped and split by function and
by crate.

Usage: python3 benches/load/instructions.py [--bin-dir target/release] [--plane alb]
       [--proto h1|h2] [--tls] [--requests 20000] [--top 30] [--keep FILE]
Needs valgrind and h2load (nghttp2-client). Only 127.0.0.1 is used; every load is bounded.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402  (origins, process start, cleanup at exit)


def self_costs(path):
    """Self cost (Ir) of every function in a callgrind output file."""
    names, cur, skip, costs = {}, None, False, collections.Counter()

    def name(v):
        m = re.match(r"\((\d+)\)(?: (.*))?", v)
        if not m:
            return v
        if m[2]:
            names[m[1]] = m[2]
        return names.get(m[1], v)

    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                cur = name(line[3:].rstrip("\n"))
            elif line.startswith("cfn="):
                name(line[4:].rstrip("\n"))
            elif line.startswith("calls="):
                skip = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and cur is not None:
                    costs[cur] += int(parts[1])
    return costs


def crate_of(fn):
    s = fn.lstrip("<")
    m = re.match(r"(?:core::ptr::drop_in_place<)?<?([A-Za-z_0-9]+)::", s)
    if m:
        return m[1]
    if re.search(r"malloc|free|realloc|unlink_chunk|consolidate", fn):
        return "malloc/free"
    if fn.startswith("__mem"):
        return "memcpy/memmove/memcmp"
    return fn[:40]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "release"))
    ap.add_argument("--plane", choices=["alb"], default="alb")
    ap.add_argument("--proto", choices=["h1", "h2"], default="h2")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--keep", help="copy the callgrind output here")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (apt-get install valgrind nghttp2-client)")
    binary = os.path.join(args.bin_dir, f"causeway-{args.plane}")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"no binary at {binary} (cargo build --release)")
    work = tempfile.mkdtemp(prefix="causeway-callgrind-")
    out = os.path.join(work, "callgrind.out")
    # The harness starts `<bin-dir>/causeway-alb`: a wrapper there runs the real one under
    # callgrind, with the same pid (exec).
    wrap = os.path.join(work, f"causeway-{args.plane}")
    with open(wrap, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out} "
                f"{binary} \"$@\"\n")
    os.chmod(wrap, 0o755)
    harness.start(["nginx", "-c", harness.origin_config()], 0, "nginx-origin")
    for p in harness.ORIGIN_PORTS:
        harness.wait_port(p)
    proxy, note = harness.causeway("alb-tls" if args.tls else "alb", work)
    if not proxy:
        raise SystemExit(note)
    load = ["h2load", "-c", "16", "-m", "10" if args.proto == "h2" else "1"]
    if args.proto == "h1":
        load.append("--h1")
    subprocess.run(load + ["-n", "2000", proxy["url"]], capture_output=True, timeout=300)
    pid = str(proxy["pid"])
    z = subprocess.run(["callgrind_control", "-z", pid], capture_output=True, text=True)
    if z.returncode != 0:
        raise SystemExit(f"callgrind_control -z failed: {z.stdout}{z.stderr}")
    r = subprocess.run(load + ["-n", str(args.requests), proxy["url"]], capture_output=True,
                       text=True, timeout=600)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", r.stdout)
    if not done or int(done[2]) != args.requests:
        raise SystemExit(f"h2load did not complete every request:\n{r.stdout}{r.stderr}")
    before = set(os.listdir(work))
    subprocess.run(["callgrind_control", "-d", pid], capture_output=True, timeout=60)
    dumped = None
    for _ in range(100):
        new = sorted(set(os.listdir(work)) - before)
        if new and os.path.getsize(os.path.join(work, new[-1])) > 0:
            dumped = os.path.join(work, new[-1])
            break
        time.sleep(0.1)
    if not dumped:
        raise SystemExit("callgrind wrote no dump")
    time.sleep(0.5)
    if args.keep:
        shutil.copy(dumped, args.keep)
    costs = self_costs(dumped)
    total, n = sum(costs.values()), args.requests
    proto = args.proto + (" over TLS" if args.tls else "")
    print(f"causeway-{args.plane}, {proto}, {n} requests: {total / n:.0f} instructions per request")
    crates = collections.Counter()
    for fn, c in costs.items():
        crates[crate_of(fn)] += c
    print("\n| crate or function family | instructions per request | share |\n|---|---|---|")
    for k, c in crates.most_common(args.top // 2):
        print(f"| {k} | {c / n:.0f} | {c / total * 100:.1f}% |")
    print("\n| function | instructions per request | share |\n|---|---|---|")
    for fn, c in costs.most_common(args.top):
        print(f"| `{fn[:110]}` | {c / n:.0f} | {c / total * 100:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
