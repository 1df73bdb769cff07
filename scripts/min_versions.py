#!/usr/bin/env python3
"""Supply chain: every locked copy of these crates is at least the version that fixed a known
advisory (h2: CONTINUATION flood and reset handling; quinn-proto: a remote panic; rustls: a
handshake panic). Reads Cargo.lock files; exits 1 naming what is too old."""
import sys
import tomllib

MINIMUM = {"h2": (0, 4, 16), "quinn-proto": (0, 11, 15), "rustls": (0, 23, 18)}


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
