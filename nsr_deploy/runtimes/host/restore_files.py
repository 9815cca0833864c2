"""Restore image files and folders with an engine (the work behind `nsr-deploy restore`).

Inputs are files or folders (folders: every image inside, recursively, mirrored under the output
folder; hidden files and folders, such as another run's partial outputs, are not inputs). An input is
never overwritten; a file that cannot be read or restored is reported and skipped, and the rest go on.

Everything that would go wrong at the output is refused before any model loads, in one line:

* two inputs that would be written to the same output file (``a/x.png b/x.png -o out/``, or ``x.png``
  and ``x.jpg`` with ``--suffix .png``; by case alone where the output's file system ignores case):
  both are named, nothing is written. Inputs given as files are written flat into the output folder,
  and a folder input mirrors its inside, whatever other inputs there are, so outputs land where the
  user expects them; a clash is a question only the user can settle (restore them into separate folders);
* ``-o`` naming a file of a format nsr-deploy does not write (``x.gif``, ``x.txt``): a name with a
  suffix never silently becomes a folder (end it with ``/`` or create the folder first);
* an input whose output would keep a suffix nsr-deploy does not write (``anim.gif -o out/``): pass ``--suffix``;
* ``-o`` on something that is neither a regular file nor a folder (``/dev/full``, a FIFO), a place that
  cannot be written (read-only, no permission), an output name longer than the file system allows.

Outputs are written through a temp file and a rename (:func:`~nsr_deploy.runtimes.host.images.write_image`);
temp files that a killed run left in an output folder are removed by the next run writing there.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.host.images import (
    IMAGE_SUFFIXES,
    name_max,
    read_image,
    stale_partials,
    write_error,
    write_image,
)


@dataclass
class Job:
    source: Path
    target: Path


@dataclass
class Outcome:
    input: str
    output: str | None
    ok: bool
    seconds: float = 0.0
    size_in: list[int] | None = None
    size_out: list[int] | None = None
    compute_ratio: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def as_report(self) -> dict:
        """The dict the restore loops report: :meth:`as_dict` and a ``status`` (restored / failed)."""
        return {**self.as_dict(), "status": "restored" if self.ok else "failed"}


def written_suffixes() -> set[str]:
    """The output suffixes nsr-deploy writes: its image formats that this Pillow can save."""
    from PIL import Image

    extensions = Image.registered_extensions()
    return {s for s in IMAGE_SUFFIXES if extensions.get(s) in Image.SAVE}


def _suffix_list() -> str:
    return ", ".join(sorted(written_suffixes()))


def check_suffix(suffix: str | None) -> str | None:
    """``--suffix`` as ``.ext``, refused now (before any model loads) unless Pillow can write it."""
    if not suffix:
        return None
    suffix = suffix if suffix.startswith(".") else "." + suffix
    if suffix.lower() not in written_suffixes():
        raise NSRError(f"--suffix {suffix!r}: not an image format nsr-deploy writes ({_suffix_list()})")
    return suffix


# -- inputs ----------------------------------------------------------------------------------------
def images_in(folder: Path) -> list[Path]:
    """The images inside ``folder``, recursively, sorted; hidden files and folders are skipped (partial
    outputs of a killed run, markers, other tools' scratch) and links to folders are not followed."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(path)
    return sorted(found)


def gather_sources(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, its output path relative to the output folder) for every input image; a file given twice
    (a folder and a file inside it) once per distinct output."""
    sources, seen = [], set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            pairs = [(f, f.relative_to(p)) for f in images_in(p)]
        else:
            pairs = [(p, Path(p.name))]  # a missing file is reported as failed later, the rest still run
        for src, rel in pairs:
            key = (os.path.realpath(src), rel)
            if key not in seen:
                seen.add(key)
                sources.append((src, rel))
    return sources


# -- the output ------------------------------------------------------------------------------------
def _kind_of(st: os.stat_result) -> str:
    mode = st.st_mode
    return ("a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def output_is_file(output: str, sources: list, folder_input: bool) -> bool:
    """Whether ``-o`` names one output file (else a folder of outputs); refuses what would go wrong."""
    out = Path(output)
    try:
        st = os.stat(out)
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file is named by refuse_unwritable
        st = None
    except OSError as e:
        raise NSRError(f"-o {output}: cannot use it ({e.strerror or e})") from None
    many = len(sources) > 1 or folder_input
    if st is not None and stat.S_ISDIR(st.st_mode):
        return False
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise NSRError(f"-o {output}: is {_kind_of(st)}; outputs are written as regular files into a folder "
                       f"or to a file name")
    suffix = out.suffix.lower()
    if st is None and (output.endswith(os.sep) or (os.altsep and output.endswith(os.altsep)) or not suffix):
        return False  # a folder to be made
    if suffix not in written_suffixes():
        if st is not None:
            raise NSRError(f"-o {output} is a file; give a folder for the outputs")
        from PIL import Image

        what = ("an image format nsr-deploy does not write" if suffix in Image.registered_extensions()
                else "not an image format")
        raise NSRError(f"-o {output}: {suffix} is {what} (it writes {_suffix_list()}); for a folder of outputs, "
                       f"end the name with / or create the folder first")
    if many:
        if st is not None:
            raise NSRError(f"-o {output} is a file; give a folder for the outputs")
        raise NSRError(f"-o {output} names one image file, but {len(sources)} images are given: "
                       f"give a folder as the output")
    return True


def _folds_case(folder: Path) -> bool:
    """Whether the file system holding ``folder`` (or its nearest existing parent) ignores case."""
    here = _existing(folder.absolute())
    for p in (here, *here.parents):
        swapped = p.name.swapcase()
        if swapped != p.name:
            other = p.with_name(swapped)
            try:
                return os.path.samefile(p, other)
            except OSError:
                return False
    return False


def _existing(path: Path) -> Path:
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def refuse_collisions(jobs: list[Job], fold_case: bool) -> None:
    """Two inputs written to one output file: the second would replace the first, unseen."""
    seen: dict[str, Job] = {}
    for job in jobs:
        key = os.path.normpath(os.path.abspath(job.target))
        first = seen.setdefault(key.casefold() if fold_case else key, job)
        if first is not job:
            alias = "" if first.target == job.target else f" ({job.target} is the same file on this file system)"
            raise NSRError(f"{first.source} and {job.source} would both be written to {first.target}{alias}: "
                           f"restore them into separate output folders, or rename one")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_overwriting_inputs(jobs: list[Job]) -> None:
    """An output that is an input under another name (a link, another case, the same path)."""
    inputs = {_identity(j.source) for j in jobs} - {None}
    for job in jobs:
        if _identity(job.target) in inputs:
            raise NSRError(f"{job.target} would overwrite an input; choose another output")


def refuse_unwritable(jobs: list[Job]) -> None:
    """Every output must be writable where it goes, checked now rather than after the inference."""
    writable = written_suffixes()
    for job in jobs:
        if job.target.suffix.lower() not in writable:
            raise NSRError(f"{job.source}: its output {job.target} would be {job.target.suffix or 'without a suffix'}, "
                           f"not a format nsr-deploy writes; pass --suffix (one of {_suffix_list()})")
        limit = name_max(_existing(job.target.parent))
        if len(os.fsencode(job.target.name)) > limit:
            raise NSRError(f"{job.target}: the output name is {len(os.fsencode(job.target.name))} bytes, longer "
                           f"than the file system allows ({limit}); choose a shorter name or --suffix")
        if job.target.is_dir():
            raise NSRError(f"{job.target} is a folder; the output image cannot replace it")
    for folder in {j.target.parent for j in jobs}:
        check_writable_folder(folder)


def check_writable_folder(folder: Path) -> None:
    """``folder`` exists or can be made, and files can be created in it."""
    here = _existing(folder)
    if not here.is_dir():
        raise NSRError(f"{here} is not a folder; the outputs under {folder} cannot be written")
    if not os.access(here, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(here).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        why = "read-only file system" if read_only else "permission denied"
        raise NSRError(f"{folder}: cannot write there ({why}); choose another output")


def plan_jobs(inputs: list[str], output: str, suffix: str | None = None) -> list[Job]:
    """Pair every input image with its output path; refuse, before any work, a plan that would lose
    an output (two inputs to one file) or fail at the output (see the module docstring)."""
    suffix = check_suffix(suffix)
    if not inputs:
        raise NSRError("no input given")
    sources = gather_sources(inputs)
    if not sources:
        raise NSRError(f"no images found in {', '.join(inputs)}")
    out = Path(output)
    single_file = output_is_file(output, sources, any(Path(i).is_dir() for i in inputs))
    jobs = []
    for src, rel in sources:
        target = out if single_file else out / rel
        if suffix:
            target = target.with_suffix(suffix)
        jobs.append(Job(src, target))
    refuse_overwriting_inputs(jobs)
    refuse_collisions(jobs, _folds_case(out if not single_file else out.parent))
    refuse_unwritable(jobs)
    return jobs


def clean_partials(jobs: Iterable[Job]) -> list[Path]:
    """Remove the temp files that killed runs left in the output folders of ``jobs``."""
    removed = []
    for folder in sorted({j.target.parent for j in jobs}):
        for path in stale_partials(folder):
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another run cleaned it first
            except OSError:
                continue  # cannot be removed: it stays hidden and is never taken as an input
            removed.append(path)
            print(f"note: removed {path}, left by an interrupted restore", file=sys.stderr)
    return removed


def restore_file(engine, job: Job) -> Outcome:
    t0 = time.perf_counter()
    try:
        img = read_image(job.source, engine.config.channels)
        restored = engine.restore(img.pixels)
        try:
            job.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(job.target.parent, e) from None
        warnings = img.warnings + write_image(job.target, restored, img.alpha)
    except NSRError as e:
        return Outcome(str(job.source), None, False, time.perf_counter() - t0, error=str(e))
    except Exception as e:  # noqa: BLE001 - one bad file is reported and the others still run
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return Outcome(str(job.source), None, False, time.perf_counter() - t0, error=f"{job.source}: {msg}")
    h, w = img.pixels.shape[:2]
    return Outcome(str(job.source), str(job.target), True, round(time.perf_counter() - t0, 4), [w, h],
                   [restored.shape[1], restored.shape[0]], engine.last_stats.get("compute_ratio"), warnings)


def restore_jobs(engine, jobs: list[Job], on_outcome: Callable[[dict], None] | None = None) -> list[dict]:
    """Restore every job with ``engine``, in order; ``on_outcome`` sees each report as it is done."""
    clean_partials(jobs)
    reports = []
    for job in jobs:
        reports.append(restore_file(engine, job).as_report())
        if on_outcome:
            on_outcome(reports[-1])
    return reports
