#!/usr/bin/env python3
"""Slow clients against the alb with slowhttptest (Debian): slowloris (slow headers), slow POST
(a body trickled a few bytes at a time) and slow read (a tiny receive window). Passes when:
- slowloris connections are closed by the header deadline (5 s here), all of them, in time;
- slow-POST connections are closed once the body falls behind its minimum pace (500 B/s after
  20 s), all of them, in time;
- during every attack slowhttptest's own probe finds the service available, and an honest
  client (a GET every 100 ms on its own connections) gets every answer, none slower than 1 s.

Usage: python3 benches/reliability/slow_clients.py [--bin-dir target/debug] [--connections 300]
Only 127.0.0.1 is used; every run is bounded by slowhttptest's -l and a timeout.
"""
import argparse
import csv
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "load"))
import harness  # noqa: E402  (origins, process start, cleanup at exit)

HEADER_TIMEOUT = 5


def alb_config(port, admin):
    targets = ", ".join(f'{{ address = "{a}" }}' for a in harness.upstreams())
    conf = f"""[server]
workers = 1
[admin]
address = "127.0.0.1:{admin}"
[load_balancer]
request_header_timeout_seconds = {HEADER_TIMEOUT}
[[listeners]]
address = "127.0.0.1:{port}"
default_action = {{ type = "forward", target_group = "web" }}
[target_groups.web]
targets = [{targets}]
health_check = {{ path = "/", interval_seconds = 5, timeout_seconds = 2 }}
"""
    path = os.path.join(harness.TMP, "causeway-alb-slow.toml")
    open(path, "w").write(conf)
    return path


def honest(url, stop, out):
    """GETs every 100 ms, a new connection each: (failures, latencies)."""
    fails, lat = 0, []
    while not stop.is_set():
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
                if r.status != 200:
                    fails += 1
        except OSError:
            fails += 1
        lat.append(time.monotonic() - t)
        time.sleep(0.1)
    out.update(fails=fails, lat=lat)


def attack(name, flags, url, seconds, conns):
    prefix = os.path.join(harness.TMP, f"slow-{name}")
    cmd = ["slowhttptest", *flags, "-c", str(conns), "-r", str(conns), "-l", str(seconds),
           "-p", "3", "-g", "-o", prefix, "-u", url]
    subprocess.run(cmd, capture_output=True, timeout=seconds + 60)
    with open(prefix + ".csv") as f:
        return [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def check(name, rows, closed_by, conns, probe):
    """closed_by: seconds by which every attack connection must be closed (None: no rule)."""
    available = all(r["Service Available"] > 0 for r in rows)
    peak = max(r["Connected"] for r in rows)
    late = [r for r in rows if closed_by is not None and r["Seconds"] >= closed_by]
    lingering = max((r["Connected"] + r["Pending"] for r in late), default=0)
    closed = max(r["Closed"] for r in rows)
    lat = sorted(probe["lat"])
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
    ok = available and probe["fails"] == 0 and p99 < 1.0 and peak > conns // 2
    if closed_by is not None:
        # slowhttptest counts a connection it saw reset as an error, not as closed.
        ok = ok and lingering == 0 and closed > 0
    rule = f"all closed by {closed_by} s" if closed_by is not None else "held open"
    print(f"| {name} | {conns} | {peak} | {closed} | {rule}: {'yes' if lingering == 0 else f'NO ({lingering} open)'} "
          f"| {'yes' if available else 'NO'} | {len(lat)} GETs, {probe['fails']} failed, p99 {p99 * 1000:.0f} ms "
          f"| {'pass' if ok else 'FAIL'} |")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "debug"))
    ap.add_argument("--connections", type=int, default=300)
    args = ap.parse_args()
    harness.start(["nginx", "-c", harness.origin_config()], 0, "nginx-origin")
    for p in harness.ORIGIN_PORTS:
        harness.wait_port(p)
    port, admin = harness.free_port(), harness.free_port()
    binary = os.path.join(args.bin_dir, "causeway-alb")
    harness.start([binary, "--config", alb_config(port, admin)], 1, "causeway-alb-slow")
    harness.wait_port(admin)
    harness.wait_port(port)
    url = f"http://127.0.0.1:{port}/"
    n = args.connections
    # (name, flags, test length, every connection closed by this second)
    cases = [
        ("slowloris", ["-H", "-i", "2", "-x", "10"], 14, HEADER_TIMEOUT + 5),
        ("slow POST", ["-B", "-i", "2", "-x", "10", "-s", "100000"], 32, 20 + 6),
        ("slow read", ["-X", "-k", "4", "-n", "2", "-w", "1", "-y", "4", "-z", "4"], 14, None),
    ]
    print("| attack | connections | peak connected | closed | deadline | service available | honest client | result |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for name, flags, seconds, closed_by in cases:
        stop, probe = threading.Event(), {}
        t = threading.Thread(target=honest, args=(url, stop, probe))
        t.start()
        rows = attack(name.replace(" ", "-"), flags, url, seconds, n)
        stop.set()
        t.join()
        ok = check(name, rows, closed_by, n, probe) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
