#!/usr/bin/env python3
"""Converts the 159 test vectors of AWS's http_desync_guardian crate (its tests/*.yaml, Apache
License 2.0) to one JSON file for the alb's tests. Run after `cargo fetch`; needs PyYAML."""
import glob
import json
import os
import sys

import yaml

home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
dirs = glob.glob(f"{home}/registry/src/*/http_desync_guardian-0.1.3/tests")
if not dirs:
    sys.exit("http_desync_guardian 0.1.3 is not in the cargo registry: run cargo fetch")
out = []
for f in sorted(glob.glob(os.path.join(dirs[0], "*.yaml"))):
    for case in yaml.safe_load(open(f)) or []:
        out.append({
            "file": os.path.basename(f),
            "name": case["name"],
            "method": str(case["method"]),
            "uri": str(case["uri"]),
            "version": str(case["version"]),
            "headers": [[str(h["name"]), str(h["value"])] for h in case.get("headers") or []],
            "tier": case["expected"]["tier"],
            "reason": case["expected"]["reason"],
        })
json.dump(out, sys.stdout, indent=1, ensure_ascii=True)
print()
