"""What ``nsr-deploy restore`` shows, one loop for both ways it runs: the engine here
(:func:`~nsr_deploy.runtimes.host.restore_files.restore_jobs`) or a Ray actor pool
(:func:`~nsr_deploy.runtimes.host.ray_restore.restore_with_ray`). Both report each image as it is done;
this prints a line per image (errors and warnings on stderr) under a progress bar, then a summary or
one JSON report, and returns the exit code."""

from __future__ import annotations

import json
import sys

import click


class OutcomeView:
    """The progress bar and the line per image; ``show`` is the restore loops' ``on_outcome``."""

    def __init__(self, total: int, as_json: bool):
        from tqdm import tqdm

        self.as_json = as_json
        self.bar = tqdm(total=total, desc="restore", unit="img", disable=as_json or not sys.stderr.isatty())
        self.repeats: dict[str, int] = {}  # warning text -> how many more images had it after the first

    def show(self, outcome: dict) -> None:
        self.bar.update(1)
        if self.as_json:
            return
        self.bar.write(*outcome_line(outcome))
        for warning in outcome.get("warnings", []):
            # a folder of grey photos would say the same thing once per file: the first one names it,
            # the rest are counted and summed up at the end
            if warning in self.repeats:
                self.repeats[warning] += 1
                continue
            self.repeats[warning] = 0
            self.bar.write(f"warning: {outcome['input']}: {warning}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        for warning, more in self.repeats.items():
            if more:
                click.echo(f"warning: {warning}: also on {more} more image{'s' * (more > 1)}", err=True)


def outcome_line(o: dict) -> tuple:
    """(text,) or (text, stderr) for tqdm.write."""
    if o["status"] == "skipped":
        return (f"skipped {o['input']}: {o['output']} exists",)
    if o["status"] == "failed":
        return (f"error: {o['error']}", sys.stderr)
    (w, h), (w2, h2) = o["size_in"], o["size_out"]
    return (f"{o['input']} -> {o['output']}  {w}x{h} -> {w2}x{h2}  {o['seconds']:.2f}s",)


def restore_command(jobs, model: str, backend: str, threads: int | None, tiling: str, tile_batch: int | None,
                    as_json: bool, ray_address: str | None = None, workers: int | None = None) -> int:
    """Restore ``jobs`` here, or on Ray when ``ray_address`` is given; print; the exit code."""
    from nsr_deploy.runtimes import load

    if ray_address is not None:
        threads, workers = threads or 1, workers or 2
    engine = load(model, backend=backend, threads=threads, tiling=tiling, tile_batch=tile_batch)
    auto = engine.runner.auto_choice
    if auto and len(auto["candidates"]) > 1 and not as_json:  # which of the folder's engines runs here, and why
        click.echo(f"engine: {auto['backend']} (auto: {auto['why']})", err=True)
    view = OutcomeView(len(jobs), as_json)
    if ray_address is None:
        from nsr_deploy.runtimes.host.restore_files import restore_jobs

        with engine:
            outcomes = restore_jobs(engine, jobs, view.show)
            runner = engine.runner.describe()  # once loaded: a runner may learn its precision then
        view.close()
        failed = sum(1 for o in outcomes if o["status"] == "failed")
        doc, line = {**_head(runner, tiling, threads), "images": outcomes, "failed": failed}, None
        if len(outcomes) > 1:
            line = f"{len(outcomes) - failed} restored, {failed} failed ({runner['backend']}, {tiling})"
    else:
        from nsr_deploy.runtimes.host.ray_restore import restore_with_ray

        runner = engine.runner.describe()  # resolves 'auto' here, once: every actor runs the same backend
        report = restore_with_ray(jobs, model, runner["backend"], threads, tiling, tile_batch, workers, ray_address,
                                  show_progress=not as_json, on_outcome=view.show)
        view.close()
        summary = report.as_dict()
        failed = summary["failed"]
        doc = {**_head(runner, tiling, threads), **summary, "ray": {"address": ray_address, "workers": workers}}
        line = (f"{summary['restored']} restored, {summary['skipped']} skipped (output exists), "
                f"{failed} failed ({runner['backend']}, {tiling}; Ray: {workers} actor(s), "
                f"{threads} thread(s) each, {summary['seconds']:.1f}s)")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif line:
        click.echo(line)
    if not failed:
        return 0
    return 2 if len(jobs) == 1 else 1  # one image that failed is a bad input; a folder with some bad files is 1


def _head(runner: dict, tiling: str, threads: int | None) -> dict:
    head = {"backend": runner["backend"], "precision": runner["precision"], "tiling": tiling, "threads": threads}
    if runner.get("auto"):
        head["auto"] = runner["auto"]
    return head
