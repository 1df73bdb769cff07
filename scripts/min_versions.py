#!/usr/bin/env python3
"""Supply chain: every locked copy of these crates is at least the version that fixed a known
advisory. The issue's floors (h2 0.4.16: CONTINUATION flood, reset handling, unbounded empty
DATA frames; quinn-proto 0.11.15: a remote panic; rustls 0.23.18: a handshake panic), raised
where the audit of 2026-12-07 (docs/reliability.md) found a later fix: rustls 0.23.45
(RUSTSEC-2026-0285, TLS 1.3 handshake messages accepted across a key change), quinn-proto
0.11.18 (six DoS advisories in review, patched there), rustls-webpki 0.103.13
(RUSTSEC-2026-0104, and 0049, 0098, 0099 before it), crossbeam-epoch 0.9.20 (RUSTSEC-2026-0204). Reads Cargo.lock files; exits
1 naming what is too old."""
import sys
import tomllib

MINIMUM = {
    "h2": (0, 4, 16),
    "quinn-proto": (0, 11, 18),
    "rustls": (0, 23, 45),
    "rustls-webpki": (0, 103, 13),
    "crossbeam-epoch": (0, 9, 20),
}


def version(v):
    return tuple(int(x) for x in v.split("-")[0].split(".")[:3])


def main(paths):
    bad = []
    for path in paths:
        with open(path, "rb") as f:
            lock = tomllib.load(f)
        found = {}
        for p in lock.get("package", []):
            if p["name"] in MINIMUM:
                found.setdefault(p["name"], []).append(p["version"])
                if version(p["version"]) < MINIMUM[p["name"]]:
                    need = ".".join(map(str, MINIMUM[p["name"]]))
                    bad.append(f"{path}: {p['name']} {p['version']} is older than {need}")
        print(f"{path}: " + ", ".join(f"{n} {'/'.join(v)}" for n, v in sorted(found.items())))
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["Cargo.lock", "fuzz/Cargo.lock"]))
