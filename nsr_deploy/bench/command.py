"""``nsr-deploy bench``: parity and latency of exported engines, the paper's CPU protocol side by side.

A thin shell around :func:`nsr_deploy.bench.run_bench`: options become :class:`BenchSettings`, the
report goes to the terminal (aligned tables), ``--json`` and ``--plot``. Bad options end as one
``error:`` line and exit code 2 (also the ones click itself rejects); a failed parity check (or a
configuration that crashed) makes the exit code 1, so scripts can gate on the bench.
"""

from __future__ import annotations

import shlex
import sys

import click

from nsr_deploy.bench.settings import BACKENDS, CONV_FORMS, DEFAULT_CONV_FORMS, DEFAULT_SUITES, SUITES
from nsr_deploy.core.click_alias import QuietAliasOption
from nsr_deploy.core.errors import NSRError, user_errors


class OneLineError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BenchCommand(click.Command):
    """Turns click's own usage errors (unknown option, bad number) into one ``error:`` line, exit 2."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise OneLineError(e.format_message()) from None


def parse_list(value: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        what = f"unknown value {', '.join(map(repr, unknown))}" if unknown else "nothing given"
        raise NSRError(f"{option}: {what} (choose from {','.join(allowed)})")
    return items


def parse_ints(value: str, count: int, option: str, separators: str = ",") -> tuple[int, ...]:
    parts = value.lower()
    for sep in separators[1:]:
        parts = parts.replace(sep, separators[0])
    try:
        numbers = tuple(int(v) for v in parts.split(separators[0]))
    except ValueError:
        numbers = ()
    if len(numbers) != count or min(numbers, default=0) < 1:
        raise NSRError(f"{option}: expected {count} positive integers, got {value!r}")
    return numbers


def parse_image_size(value: str) -> tuple[int, int]:
    """``256`` or ``256x192`` (height x width)."""
    if "x" in value.lower():
        return parse_ints(value, 2, "--image-size", "x")
    (side,) = parse_ints(value, 1, "--image-size")
    return side, side


def command_line(ctx: click.Context) -> str:
    """The command as typed, options in canonical spelling (for the report)."""
    from click.core import ParameterSource

    parts = ["nsr-deploy", "bench"]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        flag = param.opts[0] if param.opts[0].startswith("--") else param.opts[-1]
        if getattr(param, "is_flag", False):
            parts += [flag] if value else []
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def build_settings(device, backends, suites, threads, quick, paper, conv_forms, image_size, layer_shape, runs,
                   data_dir, layer_runs=None, patch_runs=None):
    from dataclasses import replace
    from pathlib import Path

    from nsr_deploy.bench.settings import BenchSettings

    if quick and paper:
        raise NSRError("--quick and --paper exclude each other")
    settings = BenchSettings.preset("quick" if quick else "paper" if paper else "default", device=device,
                                    suites=parse_list(suites, SUITES, "--suite"),
                                    backends=parse_list(backends, BACKENDS, "--backends"),
                                    conv_forms=parse_list(conv_forms, CONV_FORMS, "--conv-forms"))
    if threads is not None:
        settings = settings.replace(threads=threads)
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise NSRError(f"--data {data_dir}: no such folder")
        settings = settings.replace(data_dir=Path(data_dir))
    layer, model = settings.layer, settings.model
    if layer_shape:
        channels, patch, batch = parse_ints(layer_shape, 3, "--layer-shape")
        layer = replace(layer, channels=channels, patch=patch, batch=batch)
    if image_size:
        height, width = parse_image_size(image_size)
        model = replace(model, height=height, width=width)
    if runs is not None:
        layer = replace(layer, runs=runs)
        model = replace(model, runs=runs, patch_runs=runs)
    if layer_runs is not None:  # the layer suite is cheap and noisy: give it more runs than a whole model
        layer = replace(layer, runs=layer_runs)
    if patch_runs is not None:  # the patch batch's ratios want more samples than whole-image timings
        model = replace(model, patch_runs=patch_runs)
    return settings.replace(layer=layer, model=model).validate()


@click.command(cls=BenchCommand)
@click.option("--device", default="cpu", show_default=True, help="Where engines run (cpu; TensorRT would be gpu).")
@click.option("--model", "-m", "-M", "model", metavar="NAME|PATH", default=None, cls=QuietAliasOption,
              quiet_aliases=("-M",),
              help="Bundled model name or checkpoint (default: the bundled sr-x2).")
@click.option("--backends", default=",".join(BACKENDS), show_default=True,
              help="Comma list; unavailable ones are listed as skipped, with why.")
@click.option("--suite", "suites", default=",".join(DEFAULT_SUITES), show_default=True,
              help="Comma list of parity, layer (paper Figure 5), model (latency), quality (PSNR/SSIM), "
                   "ray (restore --ray images/s for 1 vs 2 workers; only when named).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for every backend (default: the CPUs this process may use).")
@click.option("--quick", is_flag=True, help="Small batches and few runs: a smoke test, not a measurement.")
@click.option("--paper", is_flag=True, help="The paper's layer protocol exactly (batch 100, mean of 100 runs; slow).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (machine facts, settings, every figure) as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the Figure 5 curves (ours vs the paper, per backend) as a PNG.")
@click.option("--conv-forms", default=",".join(DEFAULT_CONV_FORMS), show_default=True,
              help="Sparse conv forms to build and time (dense-mix: k times the FLOPs, off by default).")
@click.option("--image-size", metavar="H[xW]", default=None, help="Model suite input size (default 256).")
@click.option("--layer-shape", metavar="C,P,B", default=None,
              help="Layer suite channels, patch size, batch (default 64,64,10; --paper 64,64,100).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Timed runs per configuration (all suites).")
@click.option("--layer-runs", type=click.IntRange(min=1), default=None,
              help="Timed runs per layer configuration (overrides --runs for the layer suite).")
@click.option("--patch-runs", type=click.IntRange(min=1), default=None,
              help="Timed runs per engine on the model suite's patch batch (overrides --runs there).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding CSet5, CSet14, BSD68 (default: $NSR_DATA or ../shared/data).")
@click.pass_context
@user_errors
def bench(ctx, device, model, backends, suites, threads, quick, paper, json_path, plot_path, conv_forms, image_size,
          layer_shape, runs, data_dir, layer_runs, patch_runs):
    """Parity and latency of exported engines, the paper's CPU protocol side by side."""
    from nsr_deploy.bench.api import run_bench
    from nsr_deploy.bench.report.document import writable_target

    settings = build_settings(device, backends, suites, threads, quick, paper, conv_forms, image_size, layer_shape,
                              runs, data_dir, layer_runs, patch_runs)
    if json_path:
        writable_target(json_path, "--json")
    if plot_path:
        writable_target(plot_path, "--plot")
        if "layer" not in settings.suites:
            raise NSRError("--plot draws the layer suite (Figure 5): add layer to --suite")
    # each block as soon as it is known: the heading at once, a suite's tables the moment it ends
    report = run_bench(settings, model, command=command_line(ctx), on_text=lambda text: click.echo(text + "\n"))
    click.echo(report.render(streamed=True))
    if json_path:
        click.echo(f"wrote {report.write_json(json_path)}")
    if plot_path:
        click.echo(f"wrote {report.write_plot(plot_path)}")
    if report.passed is False:
        sys.exit(1)
