"""Restore a corpus of images on a Ray cluster: a pool of actors, each holding one engine.

The work behind ``nsr-deploy restore INPUT_DIR -m MODEL -o OUT_DIR --ray [ADDRESS]``. The driver
pairs inputs with outputs exactly as the single-process command does (:func:`plan_jobs`), Ray Data
carries the *paths* to the actors, and each actor restores and writes its images with
:func:`restore_file`, so names and bytes match the single-process run (same backend and threads).
Paths travel rather than pixels because the images must be decoded by :func:`read_image` (EXIF
orientation, 16-bit and alpha handling) for the outputs to be identical, and because one broken
file must fail alone: it is reported, and the rest go on. Outputs that already exist are skipped
(a rerun resumes; files are written atomically, so an existing output is a complete one, and the
hidden temp files of a killed run are removed by the driver before the pool starts).

On a multi-node cluster the model, the inputs and the output folder must be on a file system every
node sees, and every node needs nsr-deploy with its runtime installed. Ray is imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nsr_deploy.core.budgets import max_pixels
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.host.restore_files import Job, Outcome, clean_partials, restore_file

LOCAL = "local"
LOOPBACK = "127.0.0.1"
OBJECT_STORE_BYTES = 256 * 2**20  # only paths and small reports travel through it

# Environment a local cluster starts with: Ray's single-machine mode (every Ray process listens on
# loopback only, as on macOS and Windows), and no usage reporting.
LOCAL_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def unavailable() -> str | None:
    try:
        import ray.data  # noqa: F401
    except ImportError as e:
        return f"ray[data] is not installed ({e.name}); pip install 'nsr-deploy[serve]'"
    return None


def _ray():
    why = unavailable()
    if why:
        raise BackendUnavailable(why)
    import ray

    return ray


# -- the cluster -----------------------------------------------------------------------------------
def start_local_cluster(num_cpus: int | None = None) -> None:
    """Start a Ray cluster on this machine that listens on loopback only (no dashboard).

    Call it before anything else imports ray: Ray reads the loopback setting when it is imported.
    """
    _set_local_env()
    ray = _ray()
    ray.init(address=LOCAL, num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:  # safety net: the environment was changed after ray was imported
        ray.shutdown()
        raise NSRError(_LOOPBACK_HELP)


_LOOPBACK_HELP = (f"a local Ray cluster here must listen on loopback only, but ray was imported before nsr-deploy "
                  f"could set {' and '.join(f'{k}={v}' for k, v in LOCAL_CLUSTER_ENV.items())}: set them in the "
                  f"environment")


def _set_local_env() -> None:
    """Put Ray in single-machine (loopback) mode; refuse when ray was imported without it."""
    if "ray" in sys.modules and any(os.environ.get(k) != v for k, v in LOCAL_CLUSTER_ENV.items()):
        raise NSRError(_LOOPBACK_HELP)
    os.environ.update(LOCAL_CLUSTER_ENV)


@contextmanager
def ray_session(address: str = LOCAL, num_cpus: int | None = None):
    """Connected to Ray inside the block: an already connected driver is reused as it is; ``local``
    starts a loopback-only cluster here; anything else (``auto``, ``host:6379``, ``ray://host:10001``)
    joins that cluster. Whatever this started or joined is left again at the end."""
    if address == LOCAL and "ray" not in sys.modules:
        _set_local_env()  # before ray is imported: it reads the setting then
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    if address == LOCAL:
        start_local_cluster(num_cpus)
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise NSRError(f"cannot join the Ray cluster at {address!r}: {str(e).splitlines()[0][:200]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_capacity(ray, workers: int, threads: int) -> None:
    """A pool that cannot be placed would wait forever: refuse it with a clear message."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers * threads > cpus:
        raise NSRError(f"{workers} workers x {threads} threads need {workers * threads} CPUs; "
                       f"the Ray cluster has {cpus:g}")


# -- the actors ----------------------------------------------------------------------------------
class RestoreActor:
    """One engine per actor, built once; restores the images of each batch it is handed."""

    def __init__(self, model: str, backend: str, threads: int, tiling: str, tile_batch: int | None,
                 max_pixels: int | None = None):
        from nsr_deploy.core.budgets import set_max_pixels
        from nsr_deploy.runtimes import load

        set_max_pixels(max_pixels)  # the driver's --max-pixels: an actor is another process

        self.engine = load(model, backend=backend, threads=threads, tiling=tiling, tile_batch=tile_batch).activate()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        reports = [json.dumps(self.restore_one(src, dst)) for src, dst in zip(batch["source"], batch["target"])]
        return {"index": batch["index"], "report": np.array(reports, dtype=object)}

    def restore_one(self, source: str, target: str) -> dict:
        job = Job(Path(source), Path(target))
        try:
            return restore_file(self.engine, job).as_dict()
        except Exception as e:  # a bug or a backend crash on one image must not stop the corpus
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            return Outcome(source, None, False, error=f"{source}: {type(e).__name__}: {msg}").as_dict()


# -- one run ---------------------------------------------------------------------------------------
@dataclass
class RayReport:
    """What happened to every job, in job order: ``restored``, ``skipped`` (output existed), ``failed``."""

    outcomes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    threads: int = 0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o["status"] == status)

    def as_dict(self) -> dict:
        return {"images": self.outcomes, "restored": self.count("restored"), "skipped": self.count("skipped"),
                "failed": self.count("failed"), "seconds": round(self.seconds, 3),
                "workers": self.workers, "threads": self.threads}


def split_done(jobs: list[Job]) -> tuple[list[tuple[int, Job]], dict[int, dict]]:
    """(jobs still to do, with their index; skip reports of jobs whose output already exists)."""
    todo, skipped = [], {}
    for i, job in enumerate(jobs):
        if job.target.exists():
            skipped[i] = {**Outcome(str(job.source), str(job.target), True).as_dict(), "status": "skipped"}
        else:
            todo.append((i, job))
    return todo, skipped


def _as_reported(report: dict, job: Job) -> dict:
    """An actor's outcome with the paths as the user gave them (actors work on absolute paths)."""
    report["input"] = str(job.source)
    report["output"] = str(job.target) if report["ok"] else None
    report["status"] = "restored" if report["ok"] else "failed"
    return report


def stream_outcomes(ray, todo: list[tuple[int, Job]], model: str, backend: str, threads: int, tiling: str,
                    tile_batch: int | None, workers: int) -> Iterator[tuple[int, dict]]:
    """Run the actor pool over ``todo``; yield (job index, actor report) as results arrive."""
    items = [{"index": i, "source": str(job.source.absolute()), "target": str(job.target.absolute())}
             for i, job in todo]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))  # one image per block: balance
    restored = dataset.map_batches(
        RestoreActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
        num_cpus=threads,
        fn_constructor_kwargs={"model": model, "backend": backend, "threads": threads, "tiling": tiling,
                               "tile_batch": tile_batch, "max_pixels": max_pixels()})
    try:
        for row in restored.iter_rows():
            yield int(row["index"]), json.loads(row["report"])
    except ray.exceptions.RayError as e:  # the pool itself failed (an engine that cannot load there)
        raise NSRError(f"the Ray job failed: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]  # the root cause inside Ray's wrapping
    return (errors[-1] if errors else lines[0] if lines else type(error).__name__)[:300]


def restore_with_ray(jobs: list[Job], model: str, backend: str = "auto", threads: int = 1,
                     tiling: str = "reference", tile_batch: int | None = None, workers: int = 2,
                     address: str = LOCAL, num_cpus: int | None = None, show_progress: bool = False,
                     on_outcome: Callable[[dict], None] | None = None) -> RayReport:
    """Restore ``jobs`` (from :func:`plan_jobs`) with ``workers`` actors of ``threads`` threads each.

    ``backend`` should be a concrete backend (the driver resolves ``auto`` once, so every actor
    runs the same one). ``on_outcome`` sees each report as it arrives (progress).
    """
    if workers < 1 or threads < 1:
        raise NSRError("workers and threads must be >= 1")
    model = str(Path(model).absolute()) if Path(model).exists() else model
    clean_partials(jobs)  # on a shared disk, only this machine's dead runs' (another's may still be writing)
    todo, done = split_done(jobs)
    if todo and address == LOCAL:
        preflight(model, backend, threads, tiling, tile_batch)
    for report in done.values():
        if on_outcome:
            on_outcome(report)
    t0 = time.perf_counter()
    results = dict(done)
    if todo:
        with ray_session(address, num_cpus) as ray:
            check_capacity(ray, workers, threads)
            _quiet_ray_data(ray, show_progress)
            for index, report in stream_outcomes(ray, todo, model, backend, threads, tiling, tile_batch, workers):
                results[index] = _as_reported(report, jobs[index])
                if on_outcome:
                    on_outcome(results[index])
    outcomes = [results[i] for i in range(len(jobs))]
    return RayReport(outcomes, time.perf_counter() - t0, workers, threads)


def preflight(model: str, backend: str, threads: int, tiling: str, tile_batch: int | None) -> None:
    """Load the engine once here first: on this machine the actors would load the same files, and a
    broken model is then one clear line instead of a pool of actors dying in Ray's logs."""
    from nsr_deploy.runtimes import load

    with load(model, backend=backend, threads=threads, tiling=tiling, tile_batch=tile_batch):
        pass


def _quiet_ray_data(ray, show_progress: bool) -> None:
    """Ray Data's own progress bars only on a terminal that asked for progress; no banners: the
    command reports every image itself."""
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failed job is reported as one line here
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_progress and sys.stderr.isatty()
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
