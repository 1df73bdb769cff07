#!/usr/bin/env python3
"""Reload under load: 100 SIGHUPs while wrk sends at least 30,000 requests through a Causeway
binary (alb, nlb, edge), with a broken config written for one of them. Passes when wrk saw no
socket error and no non-2xx answer, the process kept serving, its generation advanced, and the
broken config was refused (the process logged it and kept the old one).

Usage: python3 benches/reliability/reload_under_load.py [--bin-dir target/release] [alb nlb edge]
Only 127.0.0.1 is used; every run is bounded.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "load"))
import harness  # noqa: E402  (the load harness: origins, configs, wrk, cleanup at exit)

RELOADS = 100
MIN_REQUESTS = 30_000


def status(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=3) as r:
        return json.load(r)


def run(kind, bin_dir, seconds):
    name = {"alb": "causeway-alb", "nlb": "causeway-nlb", "edge": "causeway-edge"}[kind]
    binary = os.path.join(bin_dir, name)
    port, admin = harness.free_port(), harness.free_port()
    cfg = harness.causeway_cfg(kind, port, admin)
    good = open(cfg).read()
    p = harness.start([binary, "--config", cfg], 1, f"{name}-reload")
    harness.wait_port(admin)
    harness.wait_port(port)
    path = "/16k" if kind == "edge" else "/"
    url = f"http://127.0.0.1:{port}{path}"
    gen0 = status(admin)["generation"]
    result = {}

    def load():
        result.update(harness.wrk(url, seconds, 64))

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)
    interval = (seconds - 1.5) / RELOADS
    for i in range(RELOADS):
        if i == RELOADS // 2:
            # A broken file in the middle: refused, the old config stays.
            open(cfg, "w").write(good + "\n[[listeners]]\naddress = \"not an address\"\n")
        elif i == RELOADS // 2 + 1:
            open(cfg, "w").write(good)
        os.kill(p.pid, signal.SIGHUP)
        time.sleep(interval)
    t.join()
    alive = p.poll() is None
    gen = status(admin)["generation"] if alive else None
    log = open(os.path.join(harness.TMP, f"{name}-reload.log")).read()
    refused = "config reload failed, keeping the old config" in log
    ok = (alive and result.get("errors") == 0 and result.get("requests", 0) >= MIN_REQUESTS
          and gen is not None and gen > gen0 and refused)
    print(f"| {name} | {RELOADS} | {result.get('requests')} | {result.get('errors')} | "
          f"{gen0} → {gen} | {'yes' if refused else 'NO'} | {'pass' if ok else 'FAIL'} |")
    if not ok:
        # What the next look at a failure needs: wrk's kinds of error, and what the plane said
        # about its targets and itself (the broken reload's own error is expected).
        print(f"\n{name}: wrk errors by kind: {result.get('error_kinds')}", file=sys.stderr)
        for line in log.splitlines():
            if "keeping the old config" not in line and any(
                    w in line for w in ("WARN", "ERROR", "health changed", "cutting")):
                print(f"  {name} log: {line[:400]}", file=sys.stderr)
    p.terminate()
    p.wait(timeout=40)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "release"))
    ap.add_argument("--seconds", type=int, default=10, help="length of the wrk run per binary")
    ap.add_argument("kinds", nargs="*", default=["alb", "nlb", "edge"])
    args = ap.parse_args()
    harness.start(["nginx", "-c", harness.origin_config()], 0, "nginx-origin")
    for port in harness.ORIGIN_PORTS:
        harness.wait_port(port)
    print(f"{RELOADS} SIGHUPs during a {args.seconds} s wrk run (64 connections) per binary; "
          "reload 51 reads a broken file.\n")
    print("| binary | SIGHUPs | requests | failed requests | generation | broken config refused | result |")
    print("|---|---|---|---|---|---|---|")
    results = [run(k, args.bin_dir, args.seconds) for k in args.kinds]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
