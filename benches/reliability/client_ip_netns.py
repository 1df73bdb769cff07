#!/usr/bin/env python3
"""Client IP preservation across real routing: three network namespaces this script creates
(needs root), a client, the nlb and a target, on two links with no address in common:

    client 10.98.1.2 --- 10.98.1.1 nlb 10.98.2.1 --- 10.98.2.2 target

Over TCP and over UDP. The target's route to the client goes through the nlb's host, as it must for a transparent
proxy, and the nlb's host delivers what comes back from the targets' link to its own sockets
(`ip rule add iif <targets' link> lookup 100` with `local 0.0.0.0/0` in table 100: the recipe in
docs/operations.md). The target answers each request with the address it saw.

Passes when, through a group with `preserve_client_ip.enabled = true`, the target saw the
client's 10.98.1.2 (an address the nlb's host does not have, so only a transparent socket can
send from it), and through a group without it, the nlb's own 10.98.2.1.

Usage: python3 benches/reliability/client_ip_netns.py [--bin-dir target/debug]
"""
import argparse
import os
import subprocess
import sys
import time

NS = {"client": "cw-ip-client", "nlb": "cw-ip-nlb", "target": "cw-ip-target"}
TARGET = "10.98.2.2:8080"
LISTENERS = {True: "10.98.1.1:7000", False: "10.98.1.1:7001"}
UDP_TARGET = "10.98.2.2:8081"
UDP_LISTENERS = {True: "10.98.1.1:7003", False: "10.98.1.1:7004"}

TARGET_SERVER = r"""
import socket, threading
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("10.98.2.2", 8081))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(peer[0].encode(), peer)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.98.2.2", 8080))
s.listen(64)
while True:
    c, peer = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        if data:
            body = peer[0].encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(body), body))
    except OSError:
        pass
    c.close()
"""

CLIENT = r"""
import socket, sys, time
host, port = sys.argv[1].split(":")
deadline = time.monotonic() + 15
while sys.argv[2] == "udp":
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1)
    try:
        u.sendto(b"who", (host, int(port)))
        print(u.recvfrom(2048)[0].decode())
        sys.exit(0)
    except OSError:
        pass
    if time.monotonic() > deadline:
        print("no answer")
        sys.exit(0)
while True:
    try:
        c = socket.create_connection((host, int(port)), timeout=3)
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        out = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            out += chunk
        if out.startswith(b"HTTP/1.1 200"):
            print(out.split(b"\r\n\r\n", 1)[1].decode())
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        print("no answer")
        break
    time.sleep(0.2)
"""


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def setup():
    teardown()
    for ns in NS.values():
        sh(f"ip netns add {ns}")
        sh(f"ip -n {ns} link set lo up")
    sh(f"ip link add cwc0 netns {NS['client']} type veth peer name cwp0 netns {NS['nlb']}")
    sh(f"ip link add cwp1 netns {NS['nlb']} type veth peer name cwt0 netns {NS['target']}")
    sh(f"ip -n {NS['client']} addr add 10.98.1.2/24 dev cwc0")
    sh(f"ip -n {NS['client']} link set cwc0 up")
    sh(f"ip -n {NS['client']} route add default via 10.98.1.1")
    sh(f"ip -n {NS['nlb']} addr add 10.98.1.1/24 dev cwp0")
    sh(f"ip -n {NS['nlb']} addr add 10.98.2.1/24 dev cwp1")
    sh(f"ip -n {NS['nlb']} link set cwp0 up")
    sh(f"ip -n {NS['nlb']} link set cwp1 up")
    # What comes back from the targets' link is for the nlb's own (transparent) sockets.
    sh(f"ip -n {NS['nlb']} rule add iif cwp1 lookup 100 pref 100")
    sh(f"ip -n {NS['nlb']} route add local 0.0.0.0/0 dev lo table 100")
    sh(f"ip -n {NS['target']} addr add 10.98.2.2/24 dev cwt0")
    sh(f"ip -n {NS['target']} link set cwt0 up")
    sh(f"ip -n {NS['target']} route add default via 10.98.2.1")


def teardown():
    for ns in NS.values():
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/debug")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: it creates network namespaces")
    conf = "/tmp/causeway-client-ip.toml"
    groups = ""
    listeners = ""
    for proto, listen, target in (("TCP", LISTENERS, TARGET), ("UDP", UDP_LISTENERS, UDP_TARGET)):
        for preserve, addr in listen.items():
            name = ("kept" if preserve else "plain") + "_" + proto.lower()
            listeners += (f'[[listeners]]\naddress = "{addr}"\nprotocol = "{proto}"\n'
                          f'target_group = "{name}"\n')
            groups += (f'[target_groups.{name}]\nprotocol = "{proto}"\n'
                       f'targets = [{{ address = "{target}" }}]\n'
                       f'preserve_client_ip.enabled = {"true" if preserve else "false"}\n'
                       'health_check.enabled = false\n')
    open(conf, "w").write(f'[admin]\naddress = "127.0.0.1:7002"\n{listeners}{groups}')
    procs = []
    setup()
    try:
        procs.append(subprocess.Popen(["ip", "netns", "exec", NS["target"], sys.executable, "-c",
                                       TARGET_SERVER]))
        log = open("/tmp/causeway-client-ip.log", "w")
        procs.append(subprocess.Popen(["ip", "netns", "exec", NS["nlb"],
                                       os.path.join(args.bin_dir, "causeway-nlb"), "--config", conf],
                                      stdout=log, stderr=log))
        ok = True
        print("| protocol | group | target saw | want | result |")
        print("|---|---|---|---|---|")
        for proto, listen in (("tcp", LISTENERS), ("udp", UDP_LISTENERS)):
            for preserve, addr in listen.items():
                out = subprocess.run(["ip", "netns", "exec", NS["client"], sys.executable, "-c",
                                      CLIENT, addr, proto], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
                want = "10.98.1.2" if preserve else "10.98.2.1"
                good = out == want
                ok = ok and good
                print(f"| {proto} | preserve_client_ip = {str(preserve).lower()} | {out} | "
                      f"{want} | {'pass' if good else 'FAIL'} |")
        if not ok:
            print(open("/tmp/causeway-client-ip.log").read()[-3000:])
            raise SystemExit(1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        teardown()


if __name__ == "__main__":
    main()
