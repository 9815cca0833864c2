"""Reading untrusted files in bounded time and memory. Torch-free (the runtimes use it).

A path can name a FIFO (the read blocks for ever), a device such as ``/dev/zero`` (it never ends) or a
file that is swapped between a check and a read. Every untrusted file is therefore opened once, checked
with ``fstat`` on the opened descriptor (a regular file, under a size cap), and read from that descriptor:
what was checked is what is read. ``O_NONBLOCK`` keeps the open itself from waiting on a FIFO's writer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

from nsr_deploy.core.errors import NSRError

# nsr.json and a native model's .json are a few KB; an engine file a few hundred MB at most.
MAX_JSON_BYTES = 4 << 20
MAX_ENGINE_BYTES = 4 << 30
# JSON nested deeper than this is no manifest (Python's parser recurses: 200000 '[' overflow it).
MAX_JSON_DEPTH = 64


def _os_error(path, e: OSError) -> NSRError:
    if isinstance(e, PermissionError):
        return NSRError(f"{path}: permission denied (this user cannot read it)")
    if e.errno == errno.ENOENT:
        return NSRError(f"{path}: no such file")
    if e.errno == errno.EISDIR:
        return NSRError(f"{path}: is a folder, not a file")
    if e.errno == errno.ENAMETOOLONG:
        return NSRError(f"{path!s:.80}...: file name too long")
    return NSRError(f"{path}: cannot read it ({e.strerror or e})")


def open_regular(path: str | Path, cap: int, what: str = "file"):
    """``path`` opened for reading as a binary file object, refused unless it is a regular file of at
    most ``cap`` bytes (checked on the descriptor, not the path). Returns ``(file, size)``."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _os_error(path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise NSRError(f"{path}: is {kind}; only regular files are read as a {what}")
        if st.st_size > cap:
            raise NSRError(f"{path}: {st.st_size:,} bytes is too large for a {what} (limit {cap:,})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, cap: int, what: str = "file") -> bytes:
    """All bytes of a regular file of at most ``cap`` bytes, read through one descriptor."""
    f, size = open_regular(path, cap, what)
    with f:
        try:
            data = f.read(size)  # its size, not the cap: read(n) allocates n bytes up front
            more = f.read(1 << 16)
            while more and len(data) + len(more) <= cap:  # grew since fstat: read on, up to the cap
                data += more
                more = f.read(1 << 16)
        except OSError as e:
            raise _os_error(path, e) from None
    if more:  # grew past the cap while being read
        raise NSRError(f"{path}: grew past the {what} limit of {cap:,} bytes while being read")
    return data


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _depth_ok(text: str, limit: int) -> bool:
    """True when brackets outside strings nest at most ``limit`` deep (a scan, no recursion)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str | bytes, where: str) -> object:
    """JSON from an untrusted source: bounded nesting, bounded integers, one ``NSRError`` on anything bad."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NSRError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not _depth_ok(text, MAX_JSON_DEPTH):
        raise NSRError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; not a model description")

    def small_int(digits: str) -> int:
        if len(digits.lstrip("-")) > 20:
            raise NSRError(f"{where}: holds an integer of {len(digits)} digits; not a model description")
        return int(digits)

    try:
        return json.loads(text, parse_int=small_int)
    except json.JSONDecodeError as e:
        raise NSRError(f"{where}: not valid JSON ({str(e)[:120]})") from None
    except (RecursionError, ValueError) as e:
        raise NSRError(f"{where}: not valid JSON ({str(e)[:120] or type(e).__name__})") from None


def read_json(path: str | Path, what: str = "model description") -> object:
    """A small untrusted JSON file (``nsr.json``, a native model's ``.json``): regular, capped, bounded."""
    return parse_json(read_regular(path, MAX_JSON_BYTES, what), str(path))
