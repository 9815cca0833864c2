"""Restore image files and folders with an engine (the work behind `nsr-deploy restore`).

Inputs are files or folders (folders: every image inside, recursively, mirrored under the output
folder). An input is never overwritten; a file that cannot be read or restored is reported and
skipped, and the rest go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nsr_deploy.errors import NSRError
from nsr_deploy.runtimes.images import IMAGE_SUFFIXES, read_image, write_image


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


def plan_jobs(inputs: list[str], output: str, suffix: str | None = None) -> list[Job]:
    """Pair every input image with its output path."""
    if not inputs:
        raise NSRError("no input given")
    sources: list[tuple[Path, Path]] = []  # (file, path relative to where it was found)
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            sources += [(f, f.relative_to(p)) for f in found]
        elif p.exists():
            sources.append((p, Path(p.name)))
        else:
            sources.append((p, Path(p.name)))  # reported as failed later, the rest still run
    if not sources:
        raise NSRError(f"no images found in {', '.join(inputs)}")
    out = Path(output)
    single_file = len(sources) == 1 and not Path(inputs[0]).is_dir() and out.suffix.lower() in IMAGE_SUFFIXES
    jobs = []
    for src, rel in sources:
        target = out if single_file else out / rel
        if suffix:
            target = target.with_suffix(suffix)
        jobs.append(Job(src, target))
    inputs_resolved = {j.source.resolve() for j in jobs if j.source.exists()}
    for job in jobs:
        if job.target.resolve() in inputs_resolved:
            raise NSRError(f"{job.target} would overwrite an input; choose another output")
    return jobs


def restore_file(engine, job: Job) -> Outcome:
    t0 = time.perf_counter()
    try:
        img = read_image(job.source, engine.config.channels)
        restored = engine.restore(img.pixels)
        job.target.parent.mkdir(parents=True, exist_ok=True)
        warnings = img.warnings + write_image(job.target, restored, img.alpha)
    except NSRError as e:
        return Outcome(str(job.source), None, False, time.perf_counter() - t0, error=str(e))
    except (OSError, ValueError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Outcome(str(job.source), None, False, time.perf_counter() - t0, error=f"{job.source}: {msg}")
    h, w = img.pixels.shape[:2]
    return Outcome(str(job.source), str(job.target), True, round(time.perf_counter() - t0, 4), [w, h],
                   [restored.shape[1], restored.shape[0]], engine.last_stats.get("compute_ratio"), warnings)


def restore_jobs(engine, jobs: list[Job], on_outcome: Callable[[dict], None] | None = None) -> list[dict]:
    """Restore every job with ``engine``, in order; ``on_outcome`` sees each report as it is done."""
    reports = []
    for job in jobs:
        reports.append(restore_file(engine, job).as_report())
        if on_outcome:
            on_outcome(reports[-1])
    return reports
