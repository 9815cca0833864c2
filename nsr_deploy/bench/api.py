"""``run_bench``: the bench as a Python call (the CLI is a thin shell around it).

    from nsr_deploy.bench import BenchSettings, run_bench
    report = run_bench(BenchSettings.preset("quick", suites=("layer", "model")), model="sr-x2")
    print(report.render()); report.write_json("bench.json")

One run: resolve backends (unavailable ones become skipped entries), load the model if a suite needs
it, measure the sgemm rate, then every suite's configurations under one progress bar, with the same
thread count for every backend. Engines and graphs live in a temporary folder removed at the end.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from nsr_deploy.bench.backends import resolve_backends
from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.engines import EngineFactory
from nsr_deploy.bench.machine import load_average, machine_facts, sgemm_rate
from nsr_deploy.bench.report.document import FORMAT, BenchReport
from nsr_deploy.bench.report.summary import headline, headline_table
from nsr_deploy.bench.settings import BenchSettings
from nsr_deploy.core.timing import torch_threads

MODEL_SUITES = ("parity", "model", "quality", "ray")


def suite_classes() -> dict:
    from nsr_deploy.bench.suites.layer import LayerSuite
    from nsr_deploy.bench.suites.model import ModelSuite
    from nsr_deploy.bench.suites.parity import ParitySuite
    from nsr_deploy.bench.suites.quality import QualitySuite
    from nsr_deploy.bench.suites.ray import RaySuite

    return {"parity": ParitySuite, "layer": LayerSuite, "model": ModelSuite, "quality": QualitySuite,
            "ray": RaySuite}


def resolve_model(model):
    """A LoadedModel as given, or load a bundled name / checkpoint path (default: the bundled default)."""
    from nsr_deploy.assets import DEFAULT_MODEL
    from nsr_deploy.models.checkpoint import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    return load_model(str(model) if model else DEFAULT_MODEL)


def model_summary(loaded) -> dict:
    return {"name": loaded.name, "source": loaded.source, "format": loaded.source_format, "sha256": loaded.sha256,
            **loaded.config.summary()}


def run_bench(settings: BenchSettings | None = None, model=None, command: str = "run_bench()") -> BenchReport:
    """Run the suites of ``settings`` on ``model`` (LoadedModel, bundled name or path); the report."""
    settings = (settings or BenchSettings()).validate()
    t0 = time.perf_counter()
    backends = resolve_backends(settings.backends, settings.device)
    needs_model = any(s in MODEL_SUITES for s in settings.suites)
    loaded = resolve_model(model) if needs_model else None
    with tempfile.TemporaryDirectory(prefix="nsr-bench-") as scratch, torch_threads(settings.threads):
        ctx = BenchContext(settings, backends, Path(scratch), loaded)
        if loaded is not None:
            ctx.factory = EngineFactory(loaded, settings.threads, ctx.scratch, settings.model.patch_batch,
                                        settings.opset)
        ctx.machine = machine_facts(settings.threads)
        classes = suite_classes()
        suites = [classes[name](ctx) for name in settings.suites]
        jobs = [Job("sgemm rate", lambda: setattr(ctx, "sgemm", sgemm_rate(settings.threads, settings.sgemm_size)))]
        jobs += [job for suite in suites for job in suite.jobs()]
        spent, crashed = run_jobs(jobs, settings.progress)
        ctx.machine["load_average_end"] = load_average()
        ctx.machine["sgemm"] = ctx.sgemm
        sections = {suite.name: suite.result() for suite in suites}
        tables = [table for suite in suites for table in suite.tables()]
    figures = headline(sections)
    if figures:
        tables.append(headline_table(figures))
    data = {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command, "preset": settings.mode, "settings": settings.as_dict(), "machine": ctx.machine,
            "model": model_summary(loaded) if loaded is not None else None,
            "backends": backends.as_dict(settings.threads), "suites": sections,
            "seconds": round(time.perf_counter() - t0, 1), "job_seconds": spent, "crashed": crashed,
            "summary": figures, "passed": verdict(sections, crashed)}
    return BenchReport(data, tables)


def verdict(sections: dict, crashed: list[dict]) -> bool | None:
    """False when a parity check failed or a configuration crashed; None when neither could be judged."""
    if crashed:
        return False
    return sections["parity"]["passed"] if "parity" in sections else None


def run_jobs(jobs: list[Job], progress: bool) -> tuple[list[dict], list[dict]]:
    """Every job in order under one progress bar on stderr (shown on a terminal only).

    Returns the seconds each job took (building included: where the time went) and the jobs that
    crashed. Suites record expected failures (an engine that cannot be built) in their own rows; a
    crash is a bug, but one backend's crash should not throw away a long run: it is reported, with
    its exception, and the run goes on.
    """
    from tqdm import tqdm

    bar = tqdm(jobs, desc="bench", unit="config", file=sys.stderr, disable=None if progress else True,
               leave=False, dynamic_ncols=True)
    spent, crashed = [], []
    for job in bar:
        bar.set_postfix_str(job.label, refresh=True)
        t0 = time.perf_counter()
        try:
            job.run()
        except Exception as e:  # reported with the results, never swallowed
            crashed.append({"job": job.label, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"})
        spent.append({"job": job.label, "seconds": round(time.perf_counter() - t0, 2)})
    bar.close()
    return spent, crashed
