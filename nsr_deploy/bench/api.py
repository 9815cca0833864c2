"""``run_bench``: the bench as a Python call (the CLI is a thin shell around it).

    from nsr_deploy.bench import BenchSettings, run_bench
    report = run_bench(BenchSettings.preset("quick", suites=("layer", "model")), model="sr-x2")
    print(report.render()); report.write_json("bench.json")

One run: resolve backends (unavailable ones become skipped entries), load the model if a suite needs
it, measure the GEMM peaks (fp32 sgemm, and each reduced precision timed), then each suite's
configurations in turn (its tables handed to ``on_text`` as soon as they are done), with the same
thread count for every backend. Engines and graphs live in a temporary folder removed at the end.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from nsr_deploy.bench.backends import resolve_backends
from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.engines import EngineFactory
from nsr_deploy.bench.machine import gemm_peak, load_average, machine_facts, sgemm_rate
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


def run_bench(settings: BenchSettings | None = None, model=None, command: str = "run_bench()",
              on_text: Callable[[str], None] | None = None) -> BenchReport:
    """Run the suites of ``settings`` on ``model`` (LoadedModel, bundled name or path); the report.

    ``on_text``, when given, receives the report's blocks as they become known: the heading once the
    machine is described, each suite's tables as soon as that suite ends (the CLI prints them, so a long
    run talks while it works); :meth:`BenchReport.render` with ``streamed=True`` is then the rest."""
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
        data = {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": command, "preset": settings.mode, "settings": settings.as_dict(), "machine": ctx.machine,
                "model": model_summary(loaded) if loaded is not None else None,
                "backends": backends.as_dict(settings.threads)}
        if on_text:
            on_text("\n".join(BenchReport(data).heading(busy_note=False)))
        classes = suite_classes()
        suites = [classes[name](ctx) for name in settings.suites]
        loads = [ctx.machine.get("load_average_start")]
        spent, crashed = run_jobs(peak_jobs(ctx, suites), settings.progress, loads)
        tables, sections = [], {}
        ctx.machine["sgemm"] = ctx.sgemm
        ctx.machine["gemm_peaks"] = ctx.peaks
        for suite in suites:  # one suite at a time, so that its tables can be shown the moment they are done
            shown = []

            def show(table, shown=shown):
                shown.append(table)
                if on_text:
                    on_text(table.render())

            more_spent, more_crashed = run_jobs(suite.jobs(), settings.progress, loads, suite.name, show)
            spent, crashed = spent + more_spent, crashed + more_crashed
            sections[suite.name] = suite.result()  # before its tables: they read what the result worked out
            done = suite.tables()
            for table in done[len(shown):]:  # a job's tables are the first of its suite's, shown already
                show(table)
            tables += done
        ctx.machine["load_average_end"] = load_average()
        ctx.machine["load_average_peak"] = max((x for x in [*loads, ctx.machine["load_average_end"]] if x),
                                               key=lambda x: x[0], default=None)
    figures = headline(sections)
    streamed = len(tables)
    if figures:
        tables.append(headline_table(figures))
    data.update({"suites": sections, "seconds": round(time.perf_counter() - t0, 1), "job_seconds": spent,
                 "crashed": crashed, "summary": figures, "passed": verdict(sections, crashed)})
    return BenchReport(data, tables, streamed)


def peak_jobs(ctx: BenchContext, suites: list) -> list[Job]:
    """fp32 sgemm, and the GEMM peak of each reduced precision a suite reads engines against."""
    s = ctx.settings
    precisions = dict.fromkeys(p for suite in suites for p in getattr(suite, "peak_precisions", ()))

    def measure(precision: str) -> None:
        rate = sgemm_rate(s.threads, s.sgemm_size) if precision == "fp32" else gemm_peak(precision, s.threads,
                                                                                          s.sgemm_size)
        if rate:
            ctx.peaks[precision] = rate

    return [Job("sgemm rate" if p == "fp32" else f"{p} GEMM peak", lambda p=p: measure(p))
            for p in ("fp32", *precisions)]


def verdict(sections: dict, crashed: list[dict]) -> bool | None:
    """False when a parity check failed or a configuration crashed; None when neither could be judged."""
    if crashed:
        return False
    return sections["parity"]["passed"] if "parity" in sections else None


def run_jobs(jobs: list[Job], progress: bool, loads: list | None = None, what: str = "bench",
             show: Callable | None = None) -> tuple[list[dict], list[dict]]:
    """Every job in order, with progress on stderr: a bar on a terminal, a plain line per job when piped.

    Returns the seconds each job took (building included: where the time went) and the jobs that
    crashed. Suites record expected failures (an engine that cannot be built) in their own rows; a
    crash is a bug, but one backend's crash should not throw away a long run: it is reported, with
    its exception, and the run goes on. ``loads`` gets the load average after each job (the busy note
    looks at the whole run, not only its start). ``show`` gets the tables a job completes (``Job.shows``),
    crashed or not, so that they stay the first of the suite's tables, in order.
    """
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(jobs, desc=what, unit="config", file=sys.stderr, disable=not (progress and tty), leave=False,
               dynamic_ncols=True)
    spent, crashed = [], []
    for i, job in enumerate(bar, start=1):
        bar.set_postfix_str(job.label, refresh=True)
        if progress and not tty:
            print(f"{what} [{i}/{len(jobs)}] {job.label}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            job.run()
        except Exception as e:  # reported with the results, never swallowed
            crashed.append({"job": job.label, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"})
        spent.append({"job": job.label, "seconds": round(time.perf_counter() - t0, 2)})
        if job.shows and show:
            bar.clear()  # a table printed mid-bar on a terminal, then the bar again below it
            for table in job.shows():
                show(table)
            bar.refresh()
        if loads is not None:
            loads.append(load_average())
    bar.close()
    return spent, crashed
