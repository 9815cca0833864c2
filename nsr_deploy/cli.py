"""The ``nsr-deploy`` command line.

Every user error (bad file, bad option, unusable model) ends as one ``error:`` line on stderr and
exit code 2; heavy imports (torch, onnx, openvino) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import sys

import click

from nsr_deploy import __version__
from nsr_deploy.budgets import MAX_BATCH, check_batch, check_threads, set_max_pixels
from nsr_deploy.capabilities import AUTO_BACKEND, AUTO_FORM, BACKEND_NAMES, FORM_CHOICES, PRECISIONS, TARGET_CHOICES
from nsr_deploy.cli_group import OneLineErrorGroup
from nsr_deploy.errors import NSRError, user_errors


def model_argument(fn):
    """``[CKPT]`` positional or ``--model NAME``; the bundled default when neither is given."""
    fn = click.option("--model", "-M", "model_name", metavar="NAME",
                      help="A bundled model by name (see `nsr-deploy models`).")(fn)
    fn = click.option("--patch-size", type=click.IntRange(min=8), default=None,
                      help="Pooling patch size (reference lr_patch_size; default 48).")(fn)
    fn = click.option("--image-mean", type=float, default=None,
                      help="Mean subtracted from the [0,1] input (reference default 0.5).")(fn)
    return click.argument("checkpoint", required=False, metavar="[CKPT]")(fn)


def resolve_model(checkpoint, model_name, image_mean, patch_size):
    from nsr_deploy.assets import DEFAULT_MODEL
    from nsr_deploy.models.checkpoint import load_model

    if checkpoint and model_name:
        raise NSRError("give a checkpoint or --model, not both")
    return load_model(checkpoint or model_name or DEFAULT_MODEL, image_mean, patch_size)


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nsr-deploy")
def main():
    """Export and run Neural Sparse Representation (NSR) restoration networks on edge devices."""


@main.command()
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def inspect(checkpoint, model_name, image_mean, patch_size, as_json):
    """What a checkpoint holds: task, shape, k, d, parameters and FLOPs per pixel."""
    loaded = resolve_model(checkpoint, model_name, image_mean, patch_size)
    info = {"source": loaded.source, "format": loaded.source_format, "sha256": loaded.sha256,
            **loaded.config.summary()}
    twin = loaded.config.dense_twin()
    info["dense_twin"] = {"model": "wdsr", "units": twin.units, "block_width": twin.block_width,
                          "parameters": twin.parameter_count()}
    if loaded.meta:
        info["meta"] = loaded.meta
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        ("source", f"{loaded.source} ({loaded.source_format})"),
        ("model", f"{info['model']}  ({'sparse, NSR' if loaded.config.sparse else 'dense'})"),
        ("task", info["task"]),
        ("channels", info["channels"]),
        ("blocks x units", f"{info['blocks']} x {info['units']} (width multiplier {info['width_multiplier']:g}, "
                           f"{info['block_width']} inside a block)"),
        ("sparsity", f"k={info['k']} groups, d={info['d']} cardinals" if loaded.config.sparse else "none (dense)"),
        ("image mean / patch", f"{info['image_mean']:g} / {info['patch_size']}"),
        ("parameters", f"{info['parameters']:,} folded; {info['parameters_reference']:,} as the trainer counts "
                       f"(weight_g and weight_v)"),
        ("MFLOPs / pixel", f"{info['mflops_per_pixel']:.3f} effective (per patch, mixing included); "
                           f"{info['mflops_per_pixel_dense_equivalent']:.3f} dense-equivalent (all k groups)"),
        ("dense twin", f"wdsr {twin.num_blocks}x{twin.units}, {twin.parameter_count():,} parameters, "
                       f"{info['dense_twin_mflops_per_pixel']:.3f} MFLOPs / pixel"),
        ("sha256", loaded.sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _describe_check(check: dict) -> str:
    """One gate's figure against its limit: a task-PSNR drop (int8) or a max abs difference."""
    if "drop_db" in check:
        return f"task PSNR drop {check['drop_db']:.3f} dB (<= {check['tolerance']:g})"
    text = f"max abs {check['max_abs']:.2e} (<= {check['tolerance']:g})"
    if "min_psnr" in check:
        text += f", PSNR {check['psnr']} dB (>= {check['min_psnr']:g})"
    return text


@main.command()
@model_argument
@click.option("--target", "-t", type=click.Choice(TARGET_CHOICES), default="onnx", show_default=True,
              help="What to build (ONNX is always built: the others are lowered from it). "
                   "'all' builds every target this machine can build.")
@click.option("--output", "-o", "out", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Output folder (written atomically).")
@click.option("--conv-form", type=click.Choice(FORM_CHOICES), default=AUTO_FORM,
              show_default=True,
              help="How the per-patch convolution is expressed in the graph. auto: decided by a rule from the model "
                   "and the targets (same file on every machine); tune: time every form that passes parity on this "
                   "machine and keep the fastest (machine-specific, recorded in nsr.json).")
@click.option("--patch-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help=f"Patches per engine call (fixed for the 'grouped' and 'folded' forms; at most {MAX_BATCH}).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13-20).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="OpenVINO/TensorRT/ONNX precision (fp16 with onnx/tensorrt/all adds model.fp16.onnx; bf16: "
                   "OpenVINO on CPUs with AVX-512 BF16 or AMX).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of calibration images for int8 (default: bundled samples).")
@click.option("--gate-images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of clean images for the int8 task-PSNR gate (default: bundled samples).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, metavar="N",
              help="Largest calibration or gate image, and the most pixels of one such folder together, read "
                   "from the headers before decoding (default: $NSR_MAX_PIXELS or 40000000).")
@click.option("--batch-profile", metavar="MIN,OPT,MAX", default=None,
              help="TensorRT optimisation profile over the patch batch (dynamic forms).")
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=16), default=1024, show_default=True,
              help="TensorRT workspace limit, MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache file, reused across builds.")
@click.option("--allow-fallback", is_flag=True,
              help="ExecuTorch: ship the .pte even if XNNPACK leaves ops of a sparse layer to portable kernels.")
@click.option("--max-side", type=click.IntRange(min=16, max=8192), default=None,
              help="ExecuTorch: largest window height / width the .pte takes (XNNPACK's memory grows with its "
                   "square; default 512).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for the parity gates (at most the CPUs this process may use).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--conformance", is_flag=True,
              help="Also write conformance vectors (inputs, window lists, expected outputs; docs/contract.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@user_errors
def export(checkpoint, model_name, image_mean, patch_size, target, out, conv_form, patch_batch, opset, precision,
           calib, gate_images, max_pixels, batch_profile, workspace_mib, timing_cache, allow_fallback, max_side,
           threads, force, conformance, as_json):
    """Export a model to deployable engines, gated on parity with the PyTorch reference."""
    from pathlib import Path

    from click.core import ParameterSource

    from nsr_deploy.exporters.output_folder import check_replaceable
    from nsr_deploy.exporters.target_options import refuse_unhonoured

    check_threads(threads, "--threads")  # bounds that need no heavy import come first
    check_batch(patch_batch, "--patch-batch")
    # where the result goes is checked first: it needs no heavy import, and nothing is lost if it is wrong
    check_replaceable(out, force, keep=tuple(p for p in (checkpoint, calib, gate_images) if p and Path(p).exists()))
    from nsr_deploy.exporters.onnx import check_options
    from nsr_deploy.exporters.pipeline import ExportOptions, export, resolve_targets

    check_options(conv_form, patch_batch, opset, threads)
    set_max_pixels(max_pixels)
    profile = None
    if batch_profile:
        try:
            profile = tuple(int(v) for v in batch_profile.split(","))
            assert len(profile) == 3 and 1 <= profile[0] <= profile[1] <= profile[2]
        except (ValueError, AssertionError):
            raise NSRError(f"--batch-profile wants MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {batch_profile!r}") \
                from None
    built, _ = resolve_targets(target)  # fail fast, before loading anything, if a target cannot be built here
    ctx = click.get_current_context()
    given = {name: value for name, value in (("precision", precision), ("calib", calib), ("gate_images", gate_images),
                                             ("batch_profile", batch_profile), ("workspace_mib", workspace_mib),
                                             ("timing_cache", timing_cache), ("allow_fallback", allow_fallback),
                                             ("max_side", max_side))
             if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    refuse_unhonoured(built, given)
    loaded = resolve_model(checkpoint, model_name, image_mean, patch_size)
    opts = ExportOptions(conv_form=conv_form, patch_batch=patch_batch, opset=opset, precision=precision,
                         calib=calib, gate_images=gate_images, threads=threads, batch_profile=profile,
                         workspace_mib=workspace_mib, timing_cache=timing_cache, allow_fallback=allow_fallback,
                         max_side=max_side, force=force, show_progress=not as_json,
                         conformance=conformance)
    manifest = export(loaded, out, target, opts)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    for key, res in manifest["parity"].items():
        for check in res["checks"]:
            click.echo(f"parity {key:<20} {check['check']:<16} {_describe_check(check)}  "
                       f"{'ok' if check['passed'] else 'FAIL'}  {check.get('detail', '')}")
    for name, why in manifest.get("skipped_targets", {}).items():
        click.echo(f"skipped {name}: {why}")
    # an engine's weights file (OpenVINO's .bin, ncnn's .bin) ships with it: name both
    files = ", ".join(f for t in manifest["targets"].values() for f in (t["file"], t.get("weights")) if f)
    click.echo(f"wrote {out}/ ({files}, nsr.json)")
    for name, places in manifest.get("runs_on", {}).items():
        for place in places:
            click.echo(f"runs on ({manifest['targets'][name]['file']}): {place}")


@main.command()
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
    from nsr_deploy.budgets import max_memory as memory_budget
    from nsr_deploy.budgets import max_pixels as pixel_budget
    from nsr_deploy.budgets import set_max_memory
    from nsr_deploy.cli_restore import restore_command
    from nsr_deploy.runtimes.restore_files import plan_jobs

    check_threads(threads, "--threads")
    check_batch(tile_batch, "--tile-batch")
    set_max_pixels(max_pixels)
    set_max_memory(max_memory)
    pixel_budget()  # a malformed NSR_MAX_PIXELS or NSR_MAX_MEMORY is refused now, not per image
    memory_budget()
    jobs = plan_jobs(list(inputs), output, suffix)
    if workers and ray_address is None:
        raise NSRError("--workers needs --ray")
    sys.exit(restore_command(jobs, model or DEFAULT_MODEL, backend, threads, tiling, tile_batch, as_json,
                             ray_address, workers))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def models(as_json):
    """The bundled default models, with their measured quality."""
    from nsr_deploy.assets import ASSETS, DEFAULT_MODEL, bundled_description, bundled_names
    from nsr_deploy.config import NSRConfig

    rows = []
    for name in bundled_names():
        doc = bundled_description(name)
        cfg = NSRConfig.from_dict(doc["config"])
        meta = doc.get("meta", {})
        rows.append({"name": name, "default": name == DEFAULT_MODEL, "task": cfg.task,
                     "degradation": meta.get("degradation"), "model": cfg.kind, "channels": cfg.channels,
                     "blocks": cfg.num_blocks, "units": cfg.units, "k": cfg.groups, "d": cfg.cardinals,
                     "parameters": cfg.parameter_count(), "mflops_per_pixel": round(cfg.flops_per_pixel() / 1e6, 3),
                     "size_mb": round((ASSETS / f"{name}.safetensors").stat().st_size / 1e6, 2),
                     "measured": meta.get("measured", []), "training": meta.get("training", {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bundled models in this installation")
        return
    for r in rows:
        star = " (default)" if r["default"] else ""
        click.echo(f"{r['name']}{star}: {r['task']}, {r['degradation']}; {r['model']} {r['blocks']}x{r['units']}, "
                   f"k={r['k']} d={r['d']}, {r['parameters']:,} parameters ({r['size_mb']} MB), "
                   f"{r['mflops_per_pixel']} MFLOPs/pixel")
        for m in r["measured"]:
            where = f"{m['dataset']} {m['level']}" if m.get("level") else m["dataset"]
            click.echo(f"    {where:<16} {m['metric']:<7} model {m['model']:.2f}  "
                       f"{m['baseline_name']} {m['baseline']:.2f}  (+{m['model'] - m['baseline']:.2f})")


def _register_subcommands() -> None:
    """Commands that live next to the code they drive (kept light: no heavy imports at load)."""
    from nsr_deploy.bench.command import bench

    main.add_command(bench)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
