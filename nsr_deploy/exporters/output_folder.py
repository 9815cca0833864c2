"""The export output folder: written beside OUT in a temp folder, renamed into place only when the
whole export succeeded, and never replacing (``--force``) what nsr-deploy did not write.

``--force`` replaces an earlier export and nothing else. What an export wrote is read from its own
``nsr.json`` (:func:`written_files`): the manifest, the files it names, and the folders holding them.
A folder whose ``nsr.json`` is not an nsr-deploy manifest, or an export folder holding anything else (an
image ``restore`` wrote there, a user's subfolder), is refused, naming what is foreign, and nothing is
removed. Names leading outside the folder do not count, and links are never followed. The check runs
before any work and again on the old folder once it has been renamed aside (no name leads into it any
more); the old folder is then emptied file by file from that list, never removed whole.

Every temp folder nsr-deploy makes beside OUT (``.OUT.tmp-*``, ``.OUT.old-*``, ``.OUT.scratch-*``) holds a
marker file with the owning process id: a later export to the same place removes those a killed run
(SIGKILL, power loss) left behind, and only those: a folder without the marker is never touched.

A write that the disk or the place refuses (full disk, quota, read-only, no permission) ends the export
with one error naming OUT and the reason, after the temp folders are gone; OUT is as it was.
"""

from __future__ import annotations

import errno
import glob
import os
import posixpath
import shutil
import socket
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import read_json
from nsr_deploy.runtimes.host.images import RANDOM_CHARS, current_umask, name_max, process_alive, write_reason
from nsr_deploy.runtimes.manifest import MANIFEST, MANIFEST_FORMAT

MARKER = ".nsr-deploy-partial"
KINDS = ("tmp", "old", "scratch")
# written beside the manifest of a model folder the export's manifest names (a Triton model folder)
MODEL_FOLDER_FILES = ("config.pbtxt",)
# top-level manifest sections that name no file of the export (see :func:`named_files`)
NOT_FILE_SECTIONS = ("source", "model", "tools", "parity", "runs_on", "skipped_targets", "io", "semantics")
SHOWN = 5  # foreign files named in a refusal; the rest are counted
# errors of the disk or the place refusing a write (not of a bad input)
WRITE_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def absolute(out: str | Path) -> Path:
    """``-o .`` and ``-o ..`` as real names (a temp folder is named after OUT's last part)."""
    return Path(os.path.abspath(os.fspath(out)))


# -- what an earlier export wrote ------------------------------------------------------------------
def _inside_name(name: object) -> str | None:
    """``name`` as a '/'-separated path inside the folder, or None (absolute, '..', no suffix, not text)."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "." not in path.name:
        return None  # every file an export writes has a suffix: "cpu" or "fp32" is no file of ours
    return "/".join(part for part in path.parts if part != ".") or None


def named_files(doc: object) -> set[str]:
    """Every string of a manifest, at any depth, read as a file name inside its folder, and as a name
    beside the ``file`` of the object it sits in (a companion, such as OpenVINO's ``.bin``, sits next to
    its engine wherever that moved). Taking every string keeps the list right as manifests name more
    files; a string that names no file matches nothing. The sections that hold the user's words or other
    programs' (the checkpoint's path, the model's name, tool versions, gate details) name nothing the
    export wrote: a user's ``tiny.pt`` beside the engines is not the export's."""
    names: set[str] = set()
    top = {k: v for k, v in doc.items() if k not in NOT_FILE_SECTIONS} if isinstance(doc, dict) else doc
    stack = [(top, "")]
    while stack:
        node, beside = stack.pop()
        if isinstance(node, dict):
            file = node.get("file")
            here = posixpath.dirname(file) if isinstance(file, str) else ""
            stack += [(value, here) for value in node.values()]
        elif isinstance(node, list):
            stack += [(value, beside) for value in node]
        elif isinstance(node, str):
            names |= {n for n in (_inside_name(node), _inside_name(f"{beside}/{node}") if beside else None) if n}
    return names


def _manifest_of(folder: Path) -> dict | None:
    """``folder/nsr.json`` when it is a plain file holding an nsr-deploy manifest, else None."""
    path = folder / MANIFEST
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        doc = read_json(path, "manifest")
    except (OSError, NSRError):
        return None
    if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT and isinstance(doc.get("targets"), dict):
        return doc
    return None


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def written_files(folder: Path) -> set[str] | None:
    """Names ('/'-separated, relative) of what an earlier export wrote into ``folder``: ``nsr.json`` and
    the marker, every file the manifest names, and in each folder it names that holds a manifest of its
    own (a Triton model folder), that manifest, the files it names and Triton's config. None when
    ``folder/nsr.json`` is not an nsr-deploy manifest."""
    doc = _manifest_of(folder)
    if doc is None:
        return None
    names = named_files(doc)
    written = {MANIFEST, MARKER} | names
    for sub in {name.split("/")[0] for name in names if "/" in name}:
        inner = _manifest_of(folder / sub) if _is_real_dir(folder / sub) else None
        if inner is not None:
            written |= {f"{sub}/{n}" for n in (MANIFEST, *MODEL_FOLDER_FILES, *named_files(inner))}
    return written


def _tree(folder: Path) -> list[tuple[str, bool]]:
    """(relative name, is a folder) of everything under ``folder``, parents first; links are not followed."""
    found, stack = [], [("", folder)]
    while stack:
        rel, path = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    name = rel + entry.name
                    is_dir = entry.is_dir(follow_symlinks=False)
                    found.append((name, is_dir))
                    if is_dir:
                        stack.append((name + "/", Path(entry.path)))
        except OSError as e:
            raise NSRError(f"{path}: cannot look inside it ({write_reason(e)}); --force replaces only a folder "
                           f"whose every file it can check") from None
    return found


def foreign_entries(folder: Path, written: set[str] | None) -> list[str]:
    """What ``folder`` holds besides ``written`` and the folders leading to it, sorted; a foreign folder
    is one entry (``name/``), not its inside."""
    written = written or set()
    parents = {"/".join(parts[:i]) for n in written for parts in [n.split("/")] for i in range(1, len(parts))}
    foreign, foreign_dirs = [], set()
    for rel, is_dir in sorted(_tree(folder)):
        parts = rel.split("/")
        if any("/".join(parts[:i]) in foreign_dirs for i in range(1, len(parts))):
            continue
        if is_dir and rel not in parents:
            foreign_dirs.add(rel)
            foreign.append(rel + "/")
        elif not is_dir and rel not in written:
            foreign.append(rel)
    return foreign


def describe(entries: list[str]) -> str:
    more = f" and {len(entries) - SHOWN} more" if len(entries) > SHOWN else ""
    return ", ".join(entries[:SHOWN]) + more


def refuse_foreign(folder: Path, shown: Path | None = None) -> set[str]:
    """The names an earlier export wrote into ``folder``; refused if ``folder`` holds anything else or is
    not a real folder (a link). ``shown`` is the name the user knows it by (it may have been moved aside)."""
    shown = shown or folder
    if not _is_real_dir(folder):
        raise NSRError(f"{shown} is no longer a folder (a link or a file took its place); --force replaces only "
                       f"an earlier export folder")
    written = written_files(folder)
    foreign = foreign_entries(folder, written)
    if written is None and foreign:
        raise NSRError(f"{shown} holds files but no nsr-deploy {MANIFEST}: it is not an earlier export, and --force "
                       f"only replaces those (or an empty folder); move it away or choose another -o")
    if foreign:
        raise NSRError(f"{shown} holds {len(foreign)} file(s) that no export wrote ({describe(foreign)}): --force "
                       f"replaces only what an earlier export wrote; move them away or choose another -o")
    return written or set()


def remove_written(folder: Path, written: set[str]) -> list[str]:
    """Remove from ``folder`` the files in ``written`` (``nsr.json`` last: an interrupted removal leaves the
    list of what remains), then the folders left empty; returns what is left (nothing, normally)."""
    tree = _tree(folder)
    files = sorted((rel for rel, is_dir in tree if not is_dir and rel in written), key=lambda rel: rel == MANIFEST)
    for rel in files:
        try:
            os.unlink(folder / rel)
        except FileNotFoundError:
            pass
    for rel in sorted((rel for rel, is_dir in tree if is_dir), key=lambda rel: -rel.count("/")):
        try:
            os.rmdir(folder / rel)
        except OSError:
            pass  # not empty: something foreign stays, with the folders leading to it
    try:
        os.rmdir(folder)
    except OSError:
        return foreign_entries(folder, set())
    return []


# -- where the result goes -------------------------------------------------------------------------
def check_replaceable(out: str | Path, force: bool, keep: tuple = ()) -> None:
    """Refuse, before any work, an OUT that this export may not replace."""
    out = absolute(out)
    cwd = Path.cwd().resolve()
    if out.exists() and (out.resolve() == cwd or out.resolve() in cwd.parents):
        raise NSRError(f"-o {out}: is the current folder (or holds it); export into a new folder")
    if out.is_symlink():
        raise NSRError(f"{out} is a symbolic link; export into a real folder (or remove the link)")
    if not out.exists():
        return
    if not out.is_dir():
        raise NSRError(f"{out} exists and is not a folder")
    if not force:
        raise NSRError(f"{out} exists; pass --force to replace it")
    for path in keep:  # named first: the input inside OUT says more than "a file no export wrote"
        if path and absolute(path).resolve().is_relative_to(out.resolve()):
            raise NSRError(f"{path} is inside {out}, which --force would replace; choose another -o")
    refuse_foreign(out)


# -- marked temp folders --------------------------------------------------------------------------
def _temp_prefix(parent: Path, name: str, kind: str) -> str:
    """``.OUT.KIND-``, OUT cut so that the temp folder's name fits the file system's name limit."""
    room = name_max(parent) - len(os.fsencode(f"..{kind}-")) - RANDOM_CHARS
    return f".{os.fsdecode(os.fsencode(name)[:max(room, 0)])}.{kind}-"


def _make_marked(parent: Path, name: str, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=_temp_prefix(parent, name, kind), dir=parent))
    try:
        (folder / MARKER).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a full disk: no unmarked temp folder is left behind
        raise
    return folder


def _owner_alive(marker: Path) -> bool:
    try:
        pid, host = marker.read_text().split()[:2]
        pid = int(pid)
    except (OSError, ValueError):
        return False
    return process_alive(pid, host == socket.gethostname())  # another machine's run: not ours to judge


def _unmark(folder: Path) -> None:
    """A folder left to the user: without its marker, nothing nsr-deploy runs will ever remove it."""
    try:
        (folder / MARKER).unlink()
    except OSError:
        pass


def _empty_old(folder: Path) -> bool:
    """Remove an ``old`` folder (an earlier export renamed aside) file by file; False if something
    that no export wrote stays (the folder then loses its marker, is kept and is named)."""
    aside = folder / "x"
    left = []
    try:
        if _is_real_dir(aside):
            written = written_files(aside)
            left = remove_written(aside, written or set())
        elif os.path.lexists(aside):
            left = ["x"]
    except NSRError:  # a folder it cannot list: kept
        left = ["x/"]
    if not left:
        _unmark(folder)
        try:
            folder.rmdir()
            return True
        except OSError:
            left = foreign_entries(folder, set())
    _unmark(folder)
    print(f"note: kept {folder}: it holds what no export wrote ({describe(left)})", file=sys.stderr)
    return False


def clean_stale(out: Path) -> list[Path]:
    """Remove the marked temp folders beside ``out`` whose export process is gone; returns them."""
    removed = []
    for kind in KINDS:
        pattern = glob.escape(_temp_prefix(out.parent, out.name, kind)) + "*"
        for folder in out.parent.glob(pattern):
            marker = folder / MARKER
            if not (_is_real_dir(folder) and marker.is_file() and not _owner_alive(marker)):
                continue
            if kind == "old":
                if not _empty_old(folder):
                    continue
            else:
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


# -- the swap --------------------------------------------------------------------------------------
def _put_back(aside: Path, out: Path, old: Path) -> str:
    """The earlier export renamed back to OUT after a refused swap; where it is, in words."""
    try:
        os.rename(aside, out)
    except OSError:
        _unmark(old)  # OUT was taken meanwhile: keep the earlier export where it is, never to be cleaned
        return f"the earlier export is kept at {aside}"
    _unmark(old)
    try:
        old.rmdir()
    except OSError:
        pass
    return f"{out} is as it was"


def _replace(tmp: Path, out: Path, force: bool) -> None:
    """Swap the finished export in for the earlier one at OUT, removing only what that one wrote."""
    check_replaceable(out, force)  # still an earlier export after the minutes the build took
    old = _make_marked(out.parent, out.name, "old")
    aside = old / "x"
    os.rename(out, aside)
    # no name leads into the old folder now: what it holds is what will be removed, checked once more
    if not _is_real_dir(aside):
        raise NSRError(f"{out} was replaced by something else during the export; {_put_back(aside, out, old)}")
    written = written_files(aside)
    foreign = foreign_entries(aside, written)
    if foreign:
        where = _put_back(aside, out, old)
        raise NSRError(f"{out} gained {len(foreign)} file(s) during the export ({describe(foreign)}) that no export "
                       f"wrote; nothing was replaced ({where}); move them away and export again")
    try:
        os.rename(tmp, out)
    except OSError:
        _put_back(aside, out, old)
        raise
    _empty_old(old)


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    if os.path.lexists(out):
        _replace(tmp, out, force)
    else:
        try:
            os.rename(tmp, out)  # over an empty folder made meanwhile at most; a non-empty one refuses
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise NSRError(f"{out} was created by someone else during the export; it was left as it is: "
                           f"move it away or choose another -o") from None
    _unmark(out)


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def refused_write(e: BaseException, out: Path) -> str | None:
    """The reason, when ``e`` is the disk or the place refusing the export's own writes (into OUT or
    its temp folders beside it), else None. A library that words a full disk as its own exception
    (not an OSError) is read as one when the disk is full."""
    if isinstance(e, OSError):
        if e.errno not in WRITE_REFUSED:
            return None
        if e.filename is not None:
            where = Path(os.path.abspath(os.fsdecode(e.filename)))
            top = where.relative_to(out.parent).parts[:1] if where.is_relative_to(out.parent) else ()
            ours = top and (top[0] == out.name
                            or any(top[0].startswith(_temp_prefix(out.parent, out.name, k)) for k in KINDS))
            if not ours:
                return None  # another file (an input, a cache): not the export's writing
        return write_reason(e)
    if isinstance(e, Exception) and not isinstance(e, NSRError) and _disk_full(out.parent):
        return "no space left on the device"
    return None


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
        raise NSRError(f"{out}: cannot write there ({write_reason(e)})") from None
    try:
        yield tmp
        _move_into_place(tmp, out, force)  # the marker goes last: a run killed before that is cleaned
    except Exception as e:
        reason = refused_write(e, out)
        if reason is None:
            raise
        advice = "free some space or choose another -o" if getattr(e, "errno", errno.ENOSPC) in OUT_OF_SPACE \
            else "choose another -o"
        raise NSRError(f"{out}: the export could not be written ({reason}); {out} was left as it was: "
                       f"{advice}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
