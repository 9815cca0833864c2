"""``nsr-deploy export``: a model to deployable engines, gated on parity with the PyTorch reference."""

from __future__ import annotations

import json

import click

from nsr_deploy.cli.model_option import model_argument, resolve_model
from nsr_deploy.core.budgets import MAX_BATCH, check_batch, check_threads, set_max_pixels
from nsr_deploy.core.capabilities import AUTO_FORM, FORM_CHOICES, PRECISIONS, TARGET_CHOICES
from nsr_deploy.core.errors import NSRError, user_errors


def _describe_check(check: dict) -> str:
    """One gate's figure against its limit: a task-PSNR drop (int8) or a max abs difference."""
    if "drop_db" in check:
        return f"task PSNR drop {check['drop_db']:.3f} dB (<= {check['tolerance']:g})"
    text = f"max abs {check['max_abs']:.2e} (<= {check['tolerance']:g})"
    if "min_psnr" in check:
        text += f", PSNR {check['psnr']} dB (>= {check['min_psnr']:g})"
    return text


@click.command()
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

    from nsr_deploy.exporters.options import refuse_unhonoured
    from nsr_deploy.exporters.output_folder import check_replaceable

    check_threads(threads, "--threads")  # bounds that need no heavy import come first
    check_batch(patch_batch, "--patch-batch")
    # where the result goes is checked first: it needs no heavy import, and nothing is lost if it is wrong
    check_replaceable(out, force, keep=tuple(p for p in (checkpoint, calib, gate_images) if p and Path(p).exists()))
    from nsr_deploy.exporters.onnx.target import check_options
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
    # an engine's weights file (OpenVINO's .bin, ncnn's .bin) and its batch-1 twin ship with it: name them
    files = [f for t in manifest["targets"].values()
             for f in (t["file"], t.get("weights"), (t.get("batch_one") or {}).get("file")) if f]
    if isinstance(manifest.get("conformance"), dict):  # the vectors an app checks itself against
        files.append(f"{manifest['conformance']['folder']}/")
    click.echo(f"wrote {out}/ ({', '.join(files)}, nsr.json)")
    from nsr_deploy.exporters.runs_on import printed_lines

    for line in printed_lines(manifest):
        click.echo(line)
