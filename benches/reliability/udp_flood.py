#!/usr/bin/env python3
"""UDP flood with spoofed sources against the nlb, inside a network namespace this script
creates (`unshare -n`; needs root). In the namespace, 10.99.0.0/16 is local (an AnyIP route on
lo), so raw IPv4 datagrams can carry any source in it; what the nlb sends back to those sources
reaches no socket and is counted by the kernel (`Udp: NoPorts` in /proc/net/snmp).

Passes when:
- 20,000 datagrams from 20,000 spoofed sources get at most `max_flows` (500) answers: the flow
  table's cap holds, and the rest are dropped and counted;
- 200 datagrams from one spoofed address (200 ports) get at most `max_flows_per_source` (3);
- no source ever gets more datagrams back than it sent, and the bytes sent back are no more than
  the bytes received (nothing is amplified);
- the nlb is alive and its admin answers afterwards.

Usage: python3 benches/reliability/udp_flood.py [--bin-dir target/debug]
"""
import argparse
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

MAX_FLOWS = 500
PER_SOURCE = 3
LISTEN = ("10.99.0.1", 7000)
TARGET = ("127.0.0.1", 7001)
ADMIN = ("127.0.0.1", 7002)


def snmp(field):
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
    return int(lines[1][lines[0].index(field)])


def datagram(src, sport, payload):
    """A raw IPv4 + UDP datagram (UDP checksum 0: allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, LISTEN[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(LISTEN[0]))
    return ip + udp


def echo(stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(TARGET)
    s.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        s.sendto(data, peer)


def settle(seconds=1.0):
    """Waits until the kernel's NoPorts count stops moving (answers still in flight)."""
    last, still = snmp("NoPorts"), 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and still < seconds / 0.1:
        time.sleep(0.1)
        now = snmp("NoPorts")
        still = still + 1 if now == last else 0
        last = now


def inside(bin_dir):
    subprocess.run("ip link set lo up && ip route add local 10.99.0.0/16 dev lo", shell=True,
                   check=True)
    conf = f"""[server]
workers = 1
[admin]
address = "{ADMIN[0]}:{ADMIN[1]}"
[[listeners]]
address = "{LISTEN[0]}:{LISTEN[1]}"
protocol = "UDP"
target_group = "echo"
udp = {{ max_flows = {MAX_FLOWS}, max_flows_per_source = {PER_SOURCE} }}
[target_groups.echo]
protocol = "UDP"
targets = [{{ address = "{TARGET[0]}:{TARGET[1]}" }}]
health_check.enabled = false
"""
    path = "/tmp/causeway-udp-flood.toml"
    open(path, "w").write(conf)
    stop = threading.Event()
    threading.Thread(target=echo, args=(stop,), daemon=True).start()
    nlb = subprocess.Popen([os.path.join(bin_dir, "causeway-nlb"), "--config", path],
                           stdout=subprocess.DEVNULL, stderr=open("/tmp/causeway-udp-flood.log", "w"))
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{ADMIN[0]}:{ADMIN[1]}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        payload = b"x" * 32
        ok = True
        print("| flood | datagrams sent | bytes sent | answers | bytes answered | cap | result |")
        print("|---|---|---|---|---|---|---|")

        def flood(name, sources, cap):
            nonlocal ok
            before, before_bytes = snmp("NoPorts"), snmp("InDatagrams")
            for src, port in sources:
                raw.sendto(datagram(src, port, payload), (LISTEN[0], 0))
            settle()
            answers = snmp("NoPorts") - before
            sent = len(sources)
            # Some answers must come (the nlb works), never more than the cap.
            good = 0 < answers <= min(cap, sent)
            ok = ok and good
            print(f"| {name} | {sent} | {sent * len(payload)} | {answers} | "
                  f"{answers * len(payload)} | {cap} | {'pass' if good else 'FAIL'} |")
            return answers

        many = [(f"10.99.{1 + i // 250}.{1 + i % 250}", 40000 + i % 20000) for i in range(20000)]
        flood("20,000 spoofed sources", many, MAX_FLOWS)
        # The table is full now; one source's flood must not get more than its cap even so:
        # run it on a fresh process.
        nlb.terminate()
        nlb.wait(timeout=20)
        nlb = subprocess.Popen([os.path.join(bin_dir, "causeway-nlb"), "--config", path],
                               stdout=subprocess.DEVNULL,
                               stderr=open("/tmp/causeway-udp-flood.log", "a"))
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{ADMIN[0]}:{ADMIN[1]}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        one = [("10.99.200.7", 30000 + i) for i in range(200)]
        flood("one spoofed address, 200 ports", one, PER_SOURCE)
        metrics = urllib.request.urlopen(f"http://{ADMIN[0]}:{ADMIN[1]}/metrics", timeout=3).read().decode()
        rejected = [line for line in metrics.splitlines()
                    if line.startswith("causeway_nlb_udp_rejected_flow_count")]
        alive = nlb.poll() is None
        print(f"\nnlb alive afterwards: {'yes' if alive else 'NO'}; " + "; ".join(rejected))
        ok = ok and alive and any('reason="per_source"' in r for r in rejected)
        return 0 if ok else 1
    finally:
        stop.set()
        nlb.terminate()
        nlb.wait(timeout=20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug"))
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin_dir)
    if args.inside:
        return inside(bin_dir)
    if os.geteuid() != 0:
        print("udp flood: needs root for a network namespace and raw sockets")
        return 1
    r = subprocess.run(["unshare", "-n", sys.executable, __file__, "--inside", "--bin-dir", bin_dir],
                       timeout=180)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
