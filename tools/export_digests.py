"""The sha256 of every file each bundled model exports to, one line per file: run it before and after a change
that must not alter exports, then diff the two outputs (nsr.json is
compared without its wall-clock ``*_seconds`` fields).

    python tools/export_digests.py OUT_DIR > before.txt   # on the old tree
    python tools/export_digests.py OUT_DIR > after.txt    # on the new tree
    diff before.txt after.txt

Exports: every engine target at fp32 (``--target all``), ONNX fp16 and OpenVINO int8, for each bundled model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

RUNS = (("all", "fp32"), ("onnx", "fp16"), ("openvino", "int8"))
CLI = "from nsr_deploy.cli import main; main()"


def bundled_names() -> list[str]:
    from nsr_deploy.assets import bundled_names as names

    return list(names())


def without_timings(doc):
    """nsr.json less the wall-clock fields (``*_seconds``), which differ from run to run by design."""
    if isinstance(doc, dict):
        return {k: without_timings(v) for k, v in doc.items() if not k.endswith("_seconds")}
    return [without_timings(v) for v in doc] if isinstance(doc, list) else doc


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.name == "nsr.json":
        data = json.dumps(without_timings(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def digests(folder: Path) -> list[str]:
    return [f"{p.relative_to(folder)} {digest(p)}" for p in sorted(folder.rglob("*")) if p.is_file()]


def main(out: Path) -> int:
    for name in bundled_names():
        for target, precision in RUNS:
            folder = out / f"{name}-{target}-{precision}"
            cmd = [sys.executable, "-c", CLI, "export", "--model", name, "--target", target,
                   "--precision", precision, "--output", str(folder), "--force", "--json"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(f"# {name} {target} {precision}: exit {proc.returncode}", file=sys.stderr, flush=True)
            if proc.returncode:
                print(f"{folder.name} exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            for line in digests(folder):
                print(f"{folder.name}/{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "digests-out")))
