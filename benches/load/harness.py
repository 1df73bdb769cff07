#!/usr/bin/env python3
"""Side-by-side load harness: a Causeway binary and its peers (HAProxy, NGINX, Varnish) in one
run, on loopback, against the same nginx origin.

The proxy under test runs on CPU 1; the origin and wrk share CPU 0. Runs are interleaved,
the order rotating each round (A B C, B C A, C A B, ...), and the median of each proxy is
reported. Judge by CPU-seconds per 100k
requests (read from /proc for the proxy and its children); req/s swings far more on a shared
2-core machine. Only 127.0.0.1 is used. Every wrk run and every wait is bounded.
"""
import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROCS = []
TMP = tempfile.mkdtemp(prefix="causeway-bench-")
ORIGIN_PORTS = (19001, 19002, 19003)


def cleanup():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    for pidfile in ("nginx-origin.pid", "nginx-peer.pid", "nginx-static.pid", "haproxy.pid"):
        path = os.path.join(TMP, pidfile)
        if os.path.exists(path):
            try:
                os.kill(int(open(path).read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    subprocess.run(["pkill", "-f", TMP], check=False)
    shutil.rmtree(TMP, ignore_errors=True)


atexit.register(cleanup)


def free_port(pair=False):
    """A free TCP port on loopback; with `pair`, one whose next port is free for TCP and UDP
    too (the edge's HTTPS and HTTP/3 listeners sit on port + 1)."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if not pair:
            s.close()
            return port
        held = [s]
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                t = socket.socket(socket.AF_INET, kind)
                held.append(t)
                t.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
        finally:
            for h in held:
                h.close()


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start(cmd, cpu, name):
    log = open(os.path.join(TMP, f"{name}.log"), "w")
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=log, stderr=log,
                         start_new_session=True)
    PROCS.append(p)
    return p


def pids_of(pid):
    """The process and all its descendants."""
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        kids = ""
    for k in kids.split():
        out.extend(pids_of(int(k)))
    return out


# --kernel-threads: a relay done inside the kernel (an experiment's BPF sockmap) sends from
# kworker threads and is charged to whichever process received the packet, so its CPU is not
# the proxy process's. With the flag, every row's CPU includes the kernel threads' CPU too.
KERNEL_THREADS = False


def kernel_threads():
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if open(f"/proc/{d}/comm").read().startswith(("kworker", "ksoftirqd")):
                    out.append(int(d))
            except OSError:
                pass
    return out


def machine_busy():
    """CPU-seconds all CPUs spent busy (not idle or waiting on I/O) since boot: the proxy,
    the client, the origin and the kernel together."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK


def cpu_seconds(pid):
    total = 0
    for p in pids_of(pid) + (kernel_threads() if KERNEL_THREADS else []):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000}[unit]


def wrk(url, seconds, conns, extra=()):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
           "--timeout", "5s", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    kinds = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        kinds.update(zip(("connect", "read", "write", "timeout"), (int(x) for x in m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        kinds["non-2xx"] = int(m.group(1))
    return {"requests": reqs, "rps": rps, "p99_ms": to_ms(p99.group(1)) if p99 else float("nan"),
            "errors": sum(kinds.values()), "error_kinds": {k: v for k, v in kinds.items() if v}}


def h2load(url, seconds, conns):
    """HTTP/2 with prior knowledge (h2c), 10 concurrent streams per connection. h2load gives
    no percentiles: the p99 column holds its mean time per request."""
    cmd = ["taskset", "-c", "0", "h2load", "-t1", f"-c{conns}", "-m10", f"-D{seconds}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if not m:
        raise SystemExit(f"h2load output not understood:\n{out}")
    done = int(m.group(1))
    # h2load counts non-2xx/3xx answers as failed.
    errors = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {"requests": done, "rps": rps, "p99_ms": to_ms(mean.group(1)) if mean else float("nan"),
            "errors": errors}


def h3load(url, seconds, conns):
    """HTTP/3 with the repository's quinn + h3 client (benches/src/bin/h3load.rs), 10 requests in
    flight per connection, on CPU 0 like the other clients."""
    m = re.match(r"h3://([\d.]+):(\d+)(/.*)", url)
    binary = os.path.join(ROOT, "target", "release", "h3load")
    ca = os.path.join(ROOT, "testkit", "certs", "ca.pem")
    cmd = ["taskset", "-c", "0", binary, f"{m.group(1)}:{m.group(2)}", "a.example.test",
           m.group(3), ca, str(conns), "10", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"h3load failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(proxy, seconds, conns, client="wrk"):
    url = proxy["url"]
    client = proxy.get("client", client)
    run = {"h2load": h2load, "h3load": h3load}.get(client, wrk)
    run(url, 2, conns)  # warm-up: pools, caches
    before, busy = cpu_seconds(proxy["pid"]), machine_busy()
    r = run(url, seconds, conns) if client != "wrk" else wrk(url, seconds, conns, proxy.get("wrk_extra", ()))
    # A proxy that served nothing (a client it cannot speak to) is reported, not divided by.
    cpu = cpu_seconds(proxy["pid"]) - before
    r["machine_per_100k"] = (machine_busy() - busy) / r["requests"] * 100_000 if r["requests"] else float("nan")
    r["cpu_per_100k"] = cpu / r["requests"] * 100_000 if r["requests"] else float("nan")
    if not r["requests"]:
        r["errors"] = max(r.get("errors", 0), 1)
    return r


def probe(url):
    try:
        ctx = ssl._create_unverified_context() if url.startswith("https") else None
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


# ------------------------------------------------------------------ configs

def origin_config():
    www = os.path.join(TMP, "www")
    os.makedirs(www, exist_ok=True)
    # nginx workers run as nobody: they must be able to read the files.
    os.chmod(TMP, 0o755)
    os.chmod(www, 0o755)
    for name, size in (("16k", 16384), ("64b", 64)):
        path = os.path.join(www, name)
        open(path, "wb").write(b"x" * size)
        os.chmod(path, 0o644)
    servers = "\n".join(
        f"""  server {{ listen 127.0.0.1:{p};
    location = / {{ return 200 "hello from {i + 1}\\n"; }}
    location / {{ root {www}; add_header Cache-Control "max-age=3600"; }} }}"""
        for i, p in enumerate(ORIGIN_PORTS))
    conf = f"""worker_processes 1;
pid {TMP}/nginx-origin.pid;
error_log {TMP}/nginx-origin-error.log;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
{servers}
}}
"""
    path = os.path.join(TMP, "nginx-origin.conf")
    open(path, "w").write(conf)
    return path


def upstreams():
    return [f"127.0.0.1:{p}" for p in ORIGIN_PORTS]


CERTS = os.path.join(ROOT, "testkit", "certs")


def tls_pem():
    """HAProxy wants the certificate and key in one file."""
    path = os.path.join(TMP, "a.example.test.pem")
    with open(path, "w") as f:
        for part in ("a.example.test.pem", "a.example.test.key"):
            f.write(open(os.path.join(CERTS, part)).read())
    return path


def haproxy_cfg(port, mode, maxconn=4000, tls=False, server_maxconn=None):
    cap = f" maxconn {server_maxconn}" if server_maxconn else ""
    servers = "\n".join(f"  server s{i} {a}{cap}" for i, a in enumerate(upstreams()))
    reuse = "  http-reuse always\n" if mode == "http" else ""
    if server_maxconn:
        reuse += "  timeout queue 5s\n"
    conf = f"""global
  nbthread 1
  maxconn {maxconn}
defaults
  mode {mode}
  timeout connect 5s
  timeout client 60s
  timeout server 60s
{reuse}frontend f
  bind 127.0.0.1:{port}{f" ssl crt {tls_pem()} alpn h2,http/1.1" if tls else ""}
  default_backend b
backend b
  balance roundrobin
{servers}
"""
    path = os.path.join(TMP, f"haproxy-{mode}{'-capped' if server_maxconn else ''}.cfg")
    open(path, "w").write(conf)
    return path


def nginx_peer_cfg(port, cache, h2=False, tls=False):
    servers = "\n".join(f"    server {a};" for a in upstreams()[: (1 if cache else 3)])
    cache_http = f"proxy_cache_path {TMP}/nginx-cache keys_zone=c:10m max_size=100m;" if cache else ""
    cache_loc = ("proxy_cache c; proxy_cache_valid 200 1h; "
                 "add_header X-Cache-Status $upstream_cache_status;") if cache else ""
    conf = f"""worker_processes 1;
pid {TMP}/nginx-peer.pid;
error_log {TMP}/nginx-peer-error.log;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {cache_http}
  upstream o {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port}{" ssl" if tls else ""}{" http2" if h2 or tls else ""};
    {f"ssl_certificate {CERTS}/a.example.test.pem; ssl_certificate_key {CERTS}/a.example.test.key;" if tls else ""}
    location / {{
      proxy_pass http://o;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      {cache_loc}
    }}
  }}
}}
"""
    path = os.path.join(TMP, f"nginx-peer-{'cache' if cache else 'proxy'}.conf")
    open(path, "w").write(conf)
    return path


def nginx_static_cfg(port, size, h2=False):
    """The ceiling for a hit: NGINX answering `return 200` with the object's bytes (a config
    token holds at most 4 KiB, so the 16 KiB object is a static file with open_file_cache)."""
    if size <= 1024:
        loc = f'return 200 "{"x" * size}";'
    else:
        loc = f"root {TMP}/www; open_file_cache max=100;"
    conf = f"""worker_processes 1;
pid {TMP}/nginx-static.pid;
error_log {TMP}/nginx-static-error.log;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port}{" http2" if h2 else ""};
    location / {{ {loc} }}
  }}
}}
"""
    path = os.path.join(TMP, "nginx-static.conf")
    open(path, "w").write(conf)
    return path


def causeway_cfg(kind, port, admin, relay=None, target_control=None):
    targets = ", ".join(f'{{ address = "{a}" }}' for a in upstreams())
    if kind in ("alb", "alb-tls"):
        tls = ""
        if kind == "alb-tls":
            tls = f"""protocol = "HTTPS"
certificates = [{{ certificate_file = "{CERTS}/a.example.test.pem", private_key_file = "{CERTS}/a.example.test.key" }}]
"""
        body = f"""[[listeners]]
address = "127.0.0.1:{port}"
{tls}default_action = {{ type = "forward", target_group = "web" }}
[target_groups.web]
targets = [{targets}]
health_check = {{ path = "/", interval_seconds = 5, timeout_seconds = 2 }}
"""
        if target_control:
            body += (f"target_control = {{ max_concurrent_requests = {target_control}, "
                     "queue_timeout_seconds = 5 }\n")
    elif kind == "nlb":
        mode = f'relay = "{relay}"\n' if relay else ""
        body = f"""[[listeners]]
address = "127.0.0.1:{port}"
target_group = "web"
{mode}[target_groups.web]
targets = [{targets}]
health_check = {{ interval_seconds = 5, timeout_seconds = 2 }}
"""
    elif kind == "edge-miss":
        body = f"""[[listeners]]
address = "127.0.0.1:{port}"
[origins.o]
address = "{upstreams()[0]}"
[default_cache_behavior]
target_origin_id = "o"
min_ttl_seconds = 0
default_ttl_seconds = 0
"""
    else:
        certs = os.path.join(ROOT, "testkit", "certs")
        tls = ""
        if kind == "edge-tls":
            tls = f"""[[listeners]]
address = "127.0.0.1:{port + 1}"
protocol = "HTTPS"
certificates = [{{ certificate_file = "{certs}/a.example.test.pem", private_key_file = "{certs}/a.example.test.key" }}]
"""
        body = f"""[[listeners]]
address = "127.0.0.1:{port}"
{tls}[origins.o]
address = "{upstreams()[0]}"
[default_cache_behavior]
target_origin_id = "o"
"""
    conf = f"""[server]
workers = 1
[admin]
address = "127.0.0.1:{admin}"
{body}"""
    path = os.path.join(TMP, f"causeway-{kind}-{port}.toml")
    open(path, "w").write(conf)
    return path


# ------------------------------------------------------------------ scenarios

def causeway(kind, bin_dir, path="/", relay=None, target_control=None):
    name = {"alb": "causeway-alb", "alb-tls": "causeway-alb", "nlb": "causeway-nlb",
            "edge": "causeway-edge",
            "edge-tls": "causeway-edge", "edge-miss": "causeway-edge"}[kind]
    binary = os.path.join(bin_dir, name)
    if not os.access(binary, os.X_OK):
        return None, f"{name}: no binary at {binary} (cargo build --release)"
    port = free_port(pair=kind == "edge-tls")
    admin = free_port()
    while admin in (port, port + 1):
        admin = free_port()
    cfg = causeway_cfg(kind, port, admin, relay, target_control)
    p = start([binary, "--config", cfg], 1, name)
    wait_port(admin)
    wait_port(port)
    url = f"{'https' if kind == 'alb-tls' else 'http'}://127.0.0.1:{port}{path}"
    time.sleep(0.5)
    status = probe(url)
    if status == 501:
        return None, f"{name}: answers 501 Not Implemented; its engine is not built yet"
    label = f"{name} ({relay})" if relay else name
    if target_control:
        label += f", {target_control} per target, queued"
    return {"name": label, "pid": p.pid, "url": url}, None


def haproxy(mode, path="/", maxconn=4000, tls=False, server_maxconn=None):
    port = free_port()
    cfg = haproxy_cfg(port, mode, maxconn, tls, server_maxconn)
    p = start(["haproxy", "-db", "-f", cfg], 1, f"haproxy-{mode}{'-capped' if server_maxconn else ''}")
    wait_port(port)
    cap = f", maxconn {server_maxconn} per server, queued" if server_maxconn else ""
    return {"name": "HAProxy 2.6" + (" (tcp)" if mode == "tcp" else "") + cap, "pid": p.pid,
            "url": f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"}


def extra_proxy(spec, path="/"):
    """`--extra-proxy NAME=COMMAND`: an experiment's proxy on CPU 1 beside the others. The
    command's `{port}` is the port it must listen on, `{origin}` the first origin's port."""
    name, _, cmd = spec.partition("=")
    port = free_port()
    argv = [a.format(port=port, origin=ORIGIN_PORTS[0]) for a in cmd.split()]
    p = start(argv, 1, "extra-" + re.sub(r"\W+", "-", name))
    wait_port(port)
    return {"name": name, "pid": p.pid, "url": f"http://127.0.0.1:{port}{path}"}


def nginx_peer(cache, path="/", h2=False, tls=False):
    port = free_port()
    p = start(["nginx", "-c", nginx_peer_cfg(port, cache, h2, tls)], 1, "nginx-peer")
    wait_port(port)
    return {"name": "NGINX 1.22" + (" proxy_cache" if cache else ""), "pid": p.pid,
            "url": f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"}


def nginx_static(size, path, h2=False):
    port = free_port()
    p = start(["nginx", "-c", nginx_static_cfg(port, size, h2)], 1, "nginx-static")
    wait_port(port)
    what = "return 200" if size <= 1024 else "static file"
    return {"name": f"NGINX 1.22 {what} (ceiling)", "pid": p.pid,
            "url": f"http://127.0.0.1:{port}{path}"}


def cache_evidence_h2(url):
    """The same over h2c, with curl (NGINX 1.22 speaks only h2 on an `http2` cleartext port)."""
    out = ""
    for _ in range(2):
        out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "--max-time", "5", url],
                             capture_output=True, timeout=10).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdr = dict((k.lower(), v.strip()) for k, _, v in (l.partition(":") for l in lines[1:]))
    keys = ("x-cache", "x-cache-status", "age", "x-varnish")
    return f"{lines[0]}, {len(body)} bytes" + "".join(f", {k}: {hdr[k]}" for k in keys if k in hdr)


def cache_evidence(url):
    """Two GETs; the second's status, length and cache headers show whether it was a hit."""
    seen = None
    for _ in range(2):
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                body = r.read()
                hdr = {k.lower(): v for k, v in r.headers.items()}
                seen = f"{r.status}, {len(body)} bytes"
        except OSError as e:
            return f"failed: {e}"
    keys = ("x-cache", "x-cache-status", "age", "x-varnish")
    return seen + "".join(f", {k}: {hdr[k]}" for k in keys if k in hdr)


def varnish(path, h2=False):
    port = free_port()
    workdir = os.path.join(TMP, "varnish")
    os.makedirs(workdir, exist_ok=True)
    extra = ["-p", "feature=+http2"] if h2 else []
    p = start(["varnishd", "-F", "-n", workdir, "-a", f"127.0.0.1:{port}",
               "-b", upstreams()[0], "-s", "malloc,256m", "-p", "thread_pools=1", *extra], 1, "varnish")
    wait_port(port, 60)
    return {"name": "Varnish 7.1", "pid": p.pid, "url": f"http://127.0.0.1:{port}{path}"}


def scenario_proxies(args):
    notes = []
    proxies = []
    path = "/"
    if args.scenario == "cache":
        path = "/16k" if args.object == "16k" else "/64b"
    if args.scenario == "cache" and args.client == "h3load":
        # Only the edge speaks HTTP/3 here (NGINX 1.22 and Varnish 7.1 have no QUIC): the same
        # process over h3, over h2 with TLS, and over cleartext HTTP/1.1, side by side.
        port = free_port()
        while True:
            try:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                port = free_port()
        binary = os.path.join(args.bin_dir, "causeway-edge")
        admin = free_port()
        p = start([binary, "--config", causeway_cfg("edge-tls", port, admin)], 1, "causeway-edge")
        wait_port(admin)
        wait_port(port + 1)
        time.sleep(1.0)
        base = {"pid": p.pid}
        proxies = [
            dict(base, name="causeway-edge h3", url=f"h3://127.0.0.1:{port + 1}{path}", client="h3load"),
            dict(base, name="causeway-edge h2 over TLS", url=f"https://127.0.0.1:{port + 1}{path}",
                 client="h2load"),
            dict(base, name="causeway-edge HTTP/1.1", url=f"http://127.0.0.1:{port}{path}", client="wrk"),
        ]
        notes.append("causeway-edge: " + cache_evidence(f"http://127.0.0.1:{port}{path}"))
        return proxies, notes
    if args.scenario == "miss":
        # `/` on the origin has no caching headers and no validator; with a zero default TTL
        # every request is a miss. The origin alone is the baseline.
        c, note = causeway("edge-miss", args.bin_dir, "/")
        origin_pid = int(open(os.path.join(TMP, "nginx-origin.pid")).read().strip())
        rows = [c] if c else []
        rows.append({"name": "origin direct (no proxy)", "pid": origin_pid,
                     "url": f"http://{upstreams()[0]}/"})
        if c:
            notes.append("causeway-edge: " + cache_evidence(c["url"]))
        return rows, notes + ([note] if note else [])
    if not args.peers_only:
        kind = {"http": "alb-tls" if args.tls else "alb", "tcp": "nlb", "cache": "edge"}[args.scenario]
        # The nlb three times: auto (the default: copy, then splice for bulk flows), its
        # buffered copy and its splice(2) relay.
        for relay in (("auto", "copy", "splice") if kind == "nlb" else (None,)):
            c, note = causeway(kind, args.bin_dir, path, relay)
            if c:
                proxies.append(c)
            if note:
                notes.append(note)
        if args.baseline_bin_dir and kind != "nlb":
            # The same binary built from another commit, interleaved with the rest, so that
            # a change is judged within one run instead of across the machine's drift.
            c, note = causeway(kind, args.baseline_bin_dir, path)
            if not c:
                raise SystemExit(f"baseline: {note}")
            c["name"] += " (baseline)"
            proxies.append(c)
    if args.scenario == "http":
        proxies += [haproxy("http", tls=args.tls), nginx_peer(False, tls=args.tls)]
        if args.target_control:
            # Per-target concurrency limits with a queue: the alb's target_control beside
            # HAProxy's server maxconn and `timeout queue`, both 5 s.
            if not args.peers_only:
                c, note = causeway("alb-tls" if args.tls else "alb", args.bin_dir, path,
                                   target_control=args.target_control)
                if c:
                    proxies.append(c)
                if note:
                    notes.append(note)
            proxies.append(haproxy("http", tls=args.tls, server_maxconn=args.target_control))
    elif args.scenario == "tcp":
        proxies += [haproxy("tcp")]
    else:
        h2 = args.client == "h2load"
        proxies += [nginx_peer(True, path, h2), varnish(path, h2),
                    nginx_static(16384 if args.object == "16k" else 64, path, h2)]
        for p in proxies:
            ev = cache_evidence_h2(p["url"]) if h2 else cache_evidence(p["url"])
            notes.append(f"{p['name']}, second GET: {ev}")
    for spec in args.extra_proxy:
        proxies.append(extra_proxy(spec, path))
    return proxies, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["http", "tcp", "cache", "miss", "idle", "bulk"],
                    default="http",
                    help="idle: memory per idle keep-alive client connection (alb, HAProxy, NGINX); "
                         "bulk: one large download through the nlb vs direct")
    ap.add_argument("--bulk-mib", type=int, default=1024, help="bulk scenario: MiB per download")
    ap.add_argument("--close", action="store_true",
                    help="every request on a new connection (Connection: close): connections per second")
    ap.add_argument("--idle-plane", choices=["alb", "nlb"], default="alb",
                    help="idle scenario: the alb against HAProxy and NGINX, or the nlb against HAProxy mode tcp")
    ap.add_argument("--idle-connections", type=int, default=9000,
                    help="HAProxy needs two descriptors per connection and the hard limit here is 20000")
    ap.add_argument("--silent", action="store_true",
                    help="idle scenario: the connections send nothing (no request at all)")
    ap.add_argument("--tls", action="store_true",
                    help="http and idle scenarios: HTTPS listeners with the same certificate (wrk: HTTP/1.1 "
                         "over TLS; --client h2load: h2 by ALPN)")
    ap.add_argument("--object", choices=["64b", "16k"], default="16k", help="cache scenario object")
    ap.add_argument("--client", choices=["wrk", "h2load", "h3load"], default="wrk",
                    help="cache scenario: h2load speaks HTTP/2 with prior knowledge (h2c); h3load "
                         "runs the edge alone over HTTP/3, h2 over TLS and HTTP/1.1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per timed wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--baseline-bin-dir",
                    help="http, cache and bulk scenarios: also run the binary built in this "
                         "folder (another commit's), interleaved, as a row of its own (for "
                         "bulk, the nlb's default relay)")
    ap.add_argument("--peers-only", action="store_true")
    ap.add_argument("--extra-proxy", action="append", default=[], metavar="NAME=COMMAND",
                    help="http, tcp and bulk scenarios: also run this command on CPU 1 as a row "
                         "({port}: where it listens; {origin}: the first origin's port)")
    ap.add_argument("--target-control", type=int, metavar="N",
                    help="http scenario: also run the alb with target_control (N requests per "
                         "target, a 5 s queue) and HAProxy with `maxconn N` per server and "
                         "`timeout queue 5s`")
    ap.add_argument("--kernel-threads", action="store_true",
                    help="count kworker and ksoftirqd CPU in every row's CPU (for in-kernel relays)")
    ap.add_argument("--json", help="write raw per-round numbers here")
    args = ap.parse_args()
    global KERNEL_THREADS
    KERNEL_THREADS = args.kernel_threads
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 CPUs: the proxy on CPU 1, origin and wrk on CPU 0")

    start(["nginx", "-c", origin_config()], 0, "nginx-origin")
    for p in ORIGIN_PORTS:
        wait_port(p)
    if args.scenario == "idle":
        return idle_memory(args)
    if args.scenario == "bulk":
        return bulk(args)
    proxies, notes = scenario_proxies(args)
    if args.close:
        for p in proxies:
            p["wrk_extra"] = ("-H", "Connection: close")
    results = {p["name"]: [] for p in proxies}
    for rnd in range(args.rounds):
        # The order rotates each round: whichever proxy runs first in a round measured 3-15%
        # dearer than the same binary run second (2026-12-07), so a fixed order biases the rows.
        k = rnd % len(proxies)
        for p in proxies[k:] + proxies[:k]:
            r = measure(p, args.duration, args.connections, args.client)
            results[p["name"]].append(r)
            print(f"round {rnd + 1} {p['name']}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms, "
                  f"{r['cpu_per_100k']:.3f} CPU-s/100k, errors {r['errors']}", file=sys.stderr)

    med = {}
    for name, rs in results.items():
        med[name] = {k: statistics.median(r[k] for r in rs)
                     for k in ("rps", "p99_ms", "cpu_per_100k", "machine_per_100k")}
        med[name]["errors"] = sum(r["errors"] for r in rs)
    cmd = "bash benches/load/run.sh " + " ".join(sys.argv[1:])
    proto = {"h2load": ", h2c", "h3load": ", h3 / h2+TLS / h1"}.get(args.client, "")
    what = f" ({args.object}{proto})" if args.scenario == "cache" else (
        " (new connections)" if args.close else "")
    if args.tls:
        what += " (TLS, h2 by ALPN)" if args.client == "h2load" else " (TLS, HTTP/1.1)"
    print(f"\n### {args.scenario}{what}")
    conns = "connections, a new one per request (Connection: close)" if args.close else "keep-alive connections"
    print(f"\n`{cmd}` — {args.rounds} interleaved rounds of {args.duration} s, "
          f"{args.connections} {conns}, medians.\n")
    lat = "mean ms (h2load) / p99 ms" if args.client == "h3load" else (
        "mean ms" if args.client == "h2load" else "p99 ms")
    print(f"| proxy | req/s | {lat} | CPU-s / 100k req | machine CPU-s / 100k req | errors |")
    print("|---|---|---|---|---|---|")
    for name, m in med.items():
        flag = " ⚠" if m["errors"] else ""
        print(f"| {name} | {m['rps']:.0f} | {m['p99_ms']:.2f} | {m['cpu_per_100k']:.3f} | "
              f"{m['machine_per_100k']:.3f} | {m['errors']}{flag} |")
    cw = [n for n in med if n.startswith("causeway")]
    if cw:
        c = med[cw[0]]
        print(f"\n| ratio | CPU per request | req/s | {lat.split()[0]} |")
        print("|---|---|---|---|")
        for name, m in med.items():
            if name == cw[0]:
                continue
            print(f"| {cw[0]} / {name} | {c['cpu_per_100k'] / m['cpu_per_100k']:.2f} | "
                  f"{c['rps'] / m['rps']:.2f} | {c['p99_ms'] / m['p99_ms']:.2f} |")
    for n in notes:
        print(f"\nNote: {n}")
    if args.json:
        json.dump({"args": vars(args), "rounds": results, "medians": med}, open(args.json, "w"), indent=1)


def bulk(args):
    """One `--bulk-mib` download at a time with curl (on CPU 0, beside the origin): straight
    from the origin, then through the nlb (auto, copy and splice) and HAProxy mode tcp on CPU 1.
    Reports MiB/s, the ratio to direct, and the proxy's CPU-seconds per GiB."""
    www = os.path.join(TMP, "www")
    block = os.urandom(1 << 20)
    with open(os.path.join(www, "bulk"), "wb") as f:
        for _ in range(args.bulk_mib):
            f.write(block)
    os.chmod(os.path.join(www, "bulk"), 0o644)
    rows = [{"name": "direct (origin, no proxy)", "pid": None,
             "url": f"http://{upstreams()[0]}/bulk"}]
    notes = []
    for relay in ("auto", "copy", "splice"):
        c, note = causeway("nlb", args.bin_dir, "/bulk", relay)
        if c:
            rows.append(c)
        if note:
            notes.append(note)
    if args.baseline_bin_dir:
        c, note = causeway("nlb", args.baseline_bin_dir, "/bulk", "auto")
        if not c:
            raise SystemExit(f"baseline: {note}")
        c["name"] += " (baseline)"
        rows.append(c)
    rows.append(haproxy("tcp", "/bulk"))
    for spec in args.extra_proxy:
        rows.append(extra_proxy(spec, "/bulk"))
    results = {r["name"]: [] for r in rows}
    for rnd in range(args.rounds):
        for r in rows:
            before = cpu_seconds(r["pid"]) if r["pid"] else 0.0
            out = subprocess.run(
                ["taskset", "-c", "0", "curl", "-s", "-o", "/dev/null", "--max-time", "120",
                 "-w", "%{size_download} %{time_total}", r["url"]],
                capture_output=True, text=True, timeout=130).stdout.split()
            cpu = (cpu_seconds(r["pid"]) - before) if r["pid"] else 0.0
            size, secs = int(out[0]), float(out[1])
            if size != args.bulk_mib << 20:
                raise SystemExit(f"{r['name']}: got {size} bytes, wanted {args.bulk_mib << 20}")
            mibs = size / (1 << 20) / secs
            results[r["name"]].append({"mibs": mibs, "cpu_per_gib": cpu * (1 << 30) / size})
            print(f"round {rnd + 1} {r['name']}: {mibs:.0f} MiB/s, "
                  f"{cpu * (1 << 30) / size:.3f} CPU-s/GiB", file=sys.stderr)
    med = {n: {k: statistics.median(x[k] for x in rs) for k in ("mibs", "cpu_per_gib")}
           for n, rs in results.items()}
    direct = med[rows[0]["name"]]["mibs"]
    cmd = "bash benches/load/run.sh " + " ".join(sys.argv[1:])
    print(f"\n### bulk ({args.bulk_mib} MiB)\n\n`{cmd}` — {args.rounds} interleaved rounds, "
          f"one download at a time, medians.\n")
    print("| path | MiB/s | / direct | proxy CPU-s per GiB |")
    print("|---|---|---|---|")
    for n, m in med.items():
        cpu = "–" if n.startswith("direct") else f"{m['cpu_per_gib']:.3f}"
        print(f"| {n} | {m['mibs']:.0f} | {m['mibs'] / direct:.2f} | {cpu} |")
    for n in notes:
        print(f"\nNote: {n}")


def idle_memory(args):
    """Memory per idle keep-alive connection: N connections, one request each, then held."""
    proxies, notes = [], []
    tls = args.tls and args.idle_plane == "alb"
    if not args.peers_only:
        c, note = causeway("alb-tls" if tls else args.idle_plane, args.bin_dir)
        if c:
            proxies.append(c)
        if note:
            notes.append(note)
    if args.idle_plane == "nlb":
        proxies += [haproxy("tcp", maxconn=args.idle_connections + 50)]
    else:
        proxies += [haproxy("http", maxconn=args.idle_connections + 50, tls=tls),
                    nginx_peer(False, tls=tls)]
    rows = []
    for p in proxies:
        port = int(p["url"].split(":")[2].split("/")[0])
        out = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__), "idle.py"), "127.0.0.1",
             str(port), str(args.idle_connections), str(p["pid"])]
            + (["silent"] if args.silent else []) + (["tls"] if tls else []),
            capture_output=True, text=True, timeout=600)
        if out.returncode != 0 or not out.stdout.strip():
            raise SystemExit(f"idle client failed for {p['name']}: {out.stderr}")
        n, before, during, errors = (int(x) for x in out.stdout.split())
        per = (during - before) / max(n, 1)
        rows.append((p["name"], n, before, during, per, errors))
        print(f"{p['name']}: {n} idle connections, RSS {before} -> {during} KB, {per:.2f} KB each, "
              f"errors {errors}", file=sys.stderr)
    cmd = "bash benches/load/run.sh " + " ".join(sys.argv[1:])
    what = ("connections that send nothing" if args.silent
            else "keep-alive connections, one request each,")
    print(f"\n### idle connections ({args.idle_plane}{', silent' if args.silent else ''}"
          f"{', TLS' if tls else ''})\n\n`{cmd}` — "
          f"{args.idle_connections} {what} then held open; resident memory of the proxy (and its children).\n")
    print("| proxy | connections | RSS before (KB) | RSS with them (KB) | KB per idle connection | errors |")
    print("|---|---|---|---|---|---|")
    for name, n, before, during, per, errors in rows:
        print(f"| {name} | {n} | {before} | {during} | {per:.2f} | {errors} |")
    for n in notes:
        print(f"\nNote: {n}")


if __name__ == "__main__":
    main()
