"""Corpus throughput on a Ray cluster: images/s of ``restore --ray`` for pools of 1, 2, ... actors.

One cluster serves every pool size (its start-up is not timed); each pool restores the same images
into a fresh folder. Two rates per pool: ``images_per_s`` over the whole run (the pool's start-up,
each actor loading its engine, included: what a user waits for) and ``steady_images_per_s`` from the
first finished image to the last (the rate once the pool is up). Both come from one run per pool, so
the ratio between pools is measured under the same conditions. Other processes sharing the CPUs
move the numbers, so ``rounds`` > 1 alternates the pool sizes (1, 2, 2, 1, ...) and reports each
one's median, and the machine's load average is recorded with them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.host.images import IMAGE_SUFFIXES
from nsr_deploy.runtimes.host.restore_files import Job


def corpus_jobs(images: list[Path], out_dir: Path, repeat: int = 1) -> list[Job]:
    """Every image ``repeat`` times, each copy to its own output file."""
    return [Job(path, out_dir / f"{i}-{path.name}") for i in range(repeat) for path in images]


def image_files(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise NSRError(f"{folder}: no images to benchmark with")
    return files


def time_pool(jobs: list[Job], model: str, backend: str, workers: int, threads: int, tiling: str) -> dict:
    """Restore ``jobs`` with one pool on the connected cluster; its two rates."""
    from nsr_deploy.runtimes.host.ray_restore import restore_with_ray

    finished: list[float] = []
    t0 = time.perf_counter()
    report = restore_with_ray(jobs, model, backend, threads, tiling, None, workers,
                              on_outcome=lambda _: finished.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    if report.count("failed"):
        first = next(o for o in report.outcomes if o["status"] == "failed")
        raise NSRError(f"benchmark image failed: {first['error']}")
    n = len(jobs)
    steady = (n - 1) / (finished[-1] - finished[0]) if n > 1 and finished[-1] > finished[0] else None
    return {"workers": workers, "threads_per_worker": threads, "images": n, "seconds": round(wall, 2),
            "images_per_s": round(n / wall, 3), "steady_images_per_s": round(steady, 3) if steady else None}


def schedule(worker_counts: tuple[int, ...], rounds: int) -> list[int]:
    """Pool sizes in run order, alternating direction each round so that drifting load is shared."""
    order = []
    for r in range(rounds):
        order += list(worker_counts) if r % 2 == 0 else list(reversed(worker_counts))
    return order


def summarise(runs: list[dict], worker_counts: tuple[int, ...]) -> list[dict]:
    """Median rates per pool size; speedup against the first pool size."""
    rows = []
    for workers in worker_counts:
        mine = [r for r in runs if r["workers"] == workers]
        steady = [r["steady_images_per_s"] for r in mine if r["steady_images_per_s"]]
        rows.append({"workers": workers, "threads_per_worker": mine[0]["threads_per_worker"],
                     "images": mine[0]["images"], "runs": len(mine),
                     "seconds": round(statistics.median(r["seconds"] for r in mine), 2),
                     "images_per_s": round(statistics.median(r["images_per_s"] for r in mine), 3),
                     "steady_images_per_s": round(statistics.median(steady), 3) if steady else None})
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    return rows


def ray_throughput(model: str, images: str | Path, worker_counts: tuple[int, ...] = (1, 2), threads: int = 1,
                   backend: str = "auto", tiling: str = "reference", repeat: int = 1, rounds: int = 1,
                   address: str = "local", num_cpus: int | None = None) -> dict:
    """images/s of the Ray corpus restore for each pool size in ``worker_counts`` (one cluster)."""
    from nsr_deploy.runtimes import load
    from nsr_deploy.runtimes.host.ray_restore import ray_session

    files = image_files(images)
    backend = load(model, backend=backend, threads=threads).runner.backend  # resolved once, as restore does
    model = str(Path(model).absolute()) if Path(model).exists() else model
    runs = []
    with ray_session(address, num_cpus) as ray, tempfile.TemporaryDirectory(prefix="nsr-ray-bench-") as tmp:
        cpus = ray.cluster_resources().get("CPU", 0)
        load_before = os.getloadavg()[0]
        for i, workers in enumerate(schedule(worker_counts, rounds)):
            out = Path(tmp) / f"run{i}-w{workers}"
            out.mkdir()
            runs.append(time_pool(corpus_jobs(files, out, repeat), model, backend, workers, threads, tiling))
        load_after = os.getloadavg()[0]
    return {"suite": "ray", "model": model, "backend": backend, "tiling": tiling, "images_folder": str(images),
            "cluster_cpus": cpus, "host_cpus": os.cpu_count(), "load_average_1min": [round(load_before, 2),
                                                                                        round(load_after, 2)],
            "pools": summarise(runs, worker_counts), "runs": runs}


def format_table(result: dict) -> str:
    """The suite as a small text table (what ``nsr-deploy bench --suite ray`` prints)."""
    lines = [f"Ray corpus restore: {result['backend']}, {result['tiling']} tiling, "
             f"{result['pools'][0]['images']} images per run, cluster {result['cluster_cpus']:g} CPUs "
             f"(load average {result['load_average_1min'][0]} -> {result['load_average_1min'][1]}); "
             f"medians of {result['pools'][0]['runs']} run(s)",
             f"{'workers':>8} {'threads':>8} {'seconds':>9} {'images/s':>9} {'steady/s':>9} {'speedup':>8}"]
    for r in result["pools"]:
        steady = f"{r['steady_images_per_s']:.3f}" if r["steady_images_per_s"] else "-"
        lines.append(f"{r['workers']:>8} {r['threads_per_worker']:>8} {r['seconds']:>9.2f} "
                     f"{r['images_per_s']:>9.3f} {steady:>9} {r['speedup']:>7.2f}x")
    return "\n".join(lines)
