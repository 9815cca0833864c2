"""Helpers shared by the hostile-input suites: hand-made hostile files, snapshots of a folder, and the
CLI run in-process or in a subprocess under an address-space limit and a timeout."""

import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from click.testing import CliRunner

from conftest import ROOT
from nsr_deploy.cli import main

MEMORY_LIMIT = 3 << 30  # bytes of address space for one CLI run (torch and ONNX Runtime fit in ~2 GiB)


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 2, rows: bytes = b"") -> bytes:
    """A PNG written by hand: its header may declare any size, whatever the data holds."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def snapshot(root: Path) -> dict:
    """Every file and folder under ``root`` with its size and modification time."""
    out = {}
    for path in root.rglob("*"):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def changes(before: dict, after: dict, allowed: tuple = ()) -> list[str]:
    """Paths created, deleted or modified, except those under an allowed output."""
    touched = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    return sorted(p for p in touched if not any(p == a or p.startswith(a + "/") for a in allowed))


def assert_one_error(code: int, stderr: str, want_code: int = 2, contains: str = "") -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == want_code, f"exit {code}, stderr: {stderr}"
    assert len(errors) == 1, stderr
    assert contains.lower() in errors[0].lower(), errors[0]
    return errors[0]


def run_limited(args, cwd: Path, timeout: float = 60, env: dict | None = None, code: str | None = None):
    """The CLI in a subprocess under an address-space limit and a timeout; returns (code, stderr, seconds)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "nsr_deploy.cli", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
                          env=full_env)
    return proc.returncode, proc.stderr, time.perf_counter() - t0


def invoke(args, cwd: Path, env: dict | None = None):
    """The CLI in-process (standalone mode, as the console script runs it)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args, env=env)
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result
