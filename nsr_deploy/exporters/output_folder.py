"""The export output folder: written beside OUT in a temp folder, renamed into place only when the
whole export succeeded, and never replacing (``--force``) what nsr-deploy did not write.

Every temp folder nsr-deploy makes beside OUT (``.OUT.tmp-*``, ``.OUT.old-*``, ``.OUT.scratch-*``) holds a
marker file with the owning process id: a later export to the same place removes those a killed run
(SIGKILL, power loss) left behind, and only those: a folder without the marker is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from nsr_deploy.errors import NSRError
from nsr_deploy.runtimes.images import current_umask
from nsr_deploy.runtimes.manifest import MANIFEST

MARKER = ".nsr-deploy-partial"
KINDS = ("tmp", "old", "scratch")


def absolute(out: str | Path) -> Path:
    """``-o .`` and ``-o ..`` as real names (a temp folder is named after OUT's last part)."""
    return Path(os.path.abspath(os.fspath(out)))


def check_replaceable(out: str | Path, force: bool, keep: tuple = ()) -> None:
    """Refuse, before any work, an OUT that this export may not replace."""
    out = absolute(out)
    cwd = Path.cwd().resolve()
    if out.exists() and (out.resolve() == cwd or out.resolve() in cwd.parents):
        raise NSRError(f"-o {out}: is the current folder (or holds it); export into a new folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise NSRError(f"{out} exists and is not a folder")
    if not force:
        raise NSRError(f"{out} exists; pass --force to replace it")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise NSRError(f"{out} holds files but no {MANIFEST}: it is not an earlier export, and --force only "
                       f"replaces those (or an empty folder); move it away or choose another -o")
    for path in keep:
        if path and absolute(path).resolve().is_relative_to(out.resolve()):
            raise NSRError(f"{path} is inside {out}, which --force would replace; choose another -o")


def _make_marked(parent: Path, name: str, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-", dir=parent))
    (folder / MARKER).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    return folder


def _owner_alive(marker: Path) -> bool:
    try:
        pid, host = marker.read_text().split()[:2]
        pid = int(pid)
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return True  # another machine's run on a shared disk: not ours to judge
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove the marked temp folders beside ``out`` whose export process is gone; returns them."""
    removed = []
    for kind in KINDS:
        for folder in out.parent.glob(f".{out.name}.{kind}-*"):
            marker = folder / MARKER
            if folder.is_dir() and not folder.is_symlink() and marker.is_file() and not _owner_alive(marker):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
                print(f"note: removed {folder}, left by an interrupted export", file=sys.stderr)
    return removed


@contextmanager
def scratch_folder(out: str | Path):
    """Working files that are not shipped, beside OUT (so a killed run's are found and cleaned too)."""
    out = absolute(out)
    folder = _make_marked(out.parent, out.name, "scratch")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_output(out: str | Path, force: bool = False):
    """Yield a temp folder beside ``out``; it becomes ``out`` only if the block succeeds."""
    out = absolute(out)
    check_replaceable(out, force)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out)
        tmp = _make_marked(parent, out.name, "tmp")
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the result should not be
    except OSError as e:
        raise NSRError(f"{out}: cannot write there ({e.strerror or e})") from None
    try:
        yield tmp
        (tmp / MARKER).unlink()
        if out.exists():
            check_replaceable(out, force)  # still an export folder after the minutes the build took
            old = _make_marked(parent, out.name, "old")
            os.rename(out, old / "x")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
