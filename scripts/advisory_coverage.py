#!/usr/bin/env python3
"""Supply chain: the vendored advisory snapshot (supply-chain/advisory-db) only speaks for the
crates that were looked up when it was made (supply-chain/checked-crates.txt). This fails,
naming them, when a lock file has a registry crate that was never looked up, so a new
dependency cannot pass the offline advisories check unseen. Usage: advisory_coverage.py
CHECKED LOCK..."""
import sys
import tomllib


def checked_names(path):
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def registry_names(lock_path):
    with open(lock_path, "rb") as f:
        lock = tomllib.load(f)
    return {p["name"] for p in lock.get("package", []) if "source" in p}


def main(checked_path, locks):
    checked = checked_names(checked_path)
    missing = {}
    for lock in locks:
        for name in sorted(registry_names(lock) - checked):
            missing.setdefault(name, []).append(lock)
    for name, where in sorted(missing.items()):
        print(
            f"{name} (in {', '.join(where)}) was never looked up in the advisory database: "
            f"copy its advisories into supply-chain/advisory-db/crates/{name}/ (if any) and "
            f"add it to {checked_path}"
        )
    return 1 if missing else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
