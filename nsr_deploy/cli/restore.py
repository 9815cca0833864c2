"""``nsr-deploy restore``: images restored with an exported engine (or the PyTorch reference)."""

from __future__ import annotations

import sys

import click

from nsr_deploy.core.budgets import MAX_BATCH, check_batch, check_threads, set_max_pixels
from nsr_deploy.core.capabilities import AUTO_BACKEND, BACKEND_NAMES
from nsr_deploy.core.errors import NSRError, user_errors


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", "-m", "model", metavar="MODEL", default=None,
              help="Export folder (with nsr.json), .onnx/.xml/.engine file, checkpoint, or bundled model "
                   "name (checkpoints and bundled models run on the PyTorch reference). Default: sr-x2.")
@click.option("--output", "-o", "output", required=True, type=click.Path(),
              help="Output file (one input) or folder.")
@click.option("--backend", type=click.Choice([AUTO_BACKEND, *sorted(BACKEND_NAMES)]),
              default="auto", show_default=True)
@click.option("--tiling", type=click.Choice(["reference", "cells"]), default="reference", show_default=True,
              help="reference: the trainer's overlapping patches (exact parity); cells: non-overlapping "
                   "cells with a thin halo (about 1.1-1.3x the pixels instead of 2.6x).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads (at most the CPUs this process may use).")
@click.option("--tile-batch", type=click.IntRange(min=1), default=None,
              help=f"Patches per engine call (at most {MAX_BATCH}).")
@click.option("--suffix", default=None, help="Output file suffix, e.g. .png (default: the input's).")
@click.option("--json", "as_json", is_flag=True, help="One JSON report on stdout.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Restore on a Ray cluster, one engine per actor; outputs that exist are skipped (resume). "
                   "Alone (put it after the inputs): a local cluster on loopback; or an address: auto, "
                   "host:6379, ray://host:10001.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray actors (with --ray; default 2), each running --threads threads (default 1).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, metavar="N",
              help="Largest input image, in pixels, read from its header before decoding "
                   "(default: $NSR_MAX_PIXELS or 40000000). The memory the run needs is budgeted too: "
                   "see --max-memory.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory one image's restoration may take (input, output at the model's scale squared, blend "
                   "weights, the tile batch), estimated before it starts, e.g. 8G or 512MiB (default: "
                   "$NSR_MAX_MEMORY, else the memory available to this process).")
@user_errors
def restore(inputs, model, output, backend, tiling, threads, tile_batch, suffix, as_json, ray_address, workers,
            max_pixels, max_memory):
    """Restore (upscale / denoise / deblock) images with an exported engine."""
    from nsr_deploy.assets import DEFAULT_MODEL
    from nsr_deploy.cli.restore_view import restore_command
    from nsr_deploy.core.budgets import max_memory as memory_budget
    from nsr_deploy.core.budgets import max_pixels as pixel_budget
    from nsr_deploy.core.budgets import set_max_memory
    from nsr_deploy.runtimes.host.restore_files import plan_jobs

    check_threads(threads, "--threads")
    check_batch(tile_batch, "--tile-batch")
    set_max_pixels(max_pixels)
    set_max_memory(max_memory)
    pixel_budget()  # a malformed NSR_MAX_PIXELS or NSR_MAX_MEMORY is refused now, not per image
    memory_budget()
    jobs = plan_jobs(list(inputs), output, suffix)
    if workers and ray_address is None:
        raise NSRError("--workers needs --ray")
    if model is None:
        from nsr_deploy.runtimes import backend_unavailable

        if backend_unavailable("torch"):  # a runtime-only install: the bundled checkpoint cannot run here
            raise NSRError(f"no -m given, and the default model ({DEFAULT_MODEL}) is a checkpoint that runs on "
                           f"PyTorch, which is not installed here: pass -m EXPORT_FOLDER (made by `nsr-deploy "
                           f"export`), or pip install 'nsr-deploy[export]'")
    sys.exit(restore_command(jobs, model or DEFAULT_MODEL, backend, threads, tiling, tile_batch, as_json,
                             ray_address, workers))
