#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one request on each, keeps them all open
idle, and prints the proxy's resident memory before and with them (KB per idle connection).
With `silent`, the connections send nothing at all (a browser's preconnect, or a flood); with
`tls`, they speak HTTP/1.1 over TLS (the handshake done, certificates not checked).

Usage: idle.py HOST PORT N PID [silent] [tls]
"""
import asyncio
import os
import ssl
import sys


def rss_kb(pid):
    total = 0
    for p in [pid] + children(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid):
    out = []
    try:
        for c in open(f"/proc/{pid}/task/{pid}/children").read().split():
            out.append(int(c))
            out.extend(children(int(c)))
    except OSError:
        pass
    return out


async def one(host, port, sem, conns, errors, silent, tls):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), 10)
            if silent:
                conns.append(w)
                return
            w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head[:40])
            conns.append(w)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            errors.append(repr(e))


async def main():
    host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    before = rss_kb(pid)
    sem = asyncio.Semaphore(100)
    conns, errors = [], []
    silent = "silent" in sys.argv[5:]
    tls = None
    if "tls" in sys.argv[5:]:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])
    await asyncio.gather(*(one(host, port, sem, conns, errors, silent, tls) for _ in range(n)))
    await asyncio.sleep(2)
    during = rss_kb(pid)
    print(f"{len(conns)} {before} {during} {len(errors)}")
    for w in conns:
        w.close()
    if errors:
        print(f"first errors: {errors[:3]}", file=sys.stderr)


asyncio.run(main())
