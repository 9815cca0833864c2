"""ONNX target: deploy rewrite -> trace -> onnxsim -> full checker -> parity gate.

Writes ``OUT/model.onnx`` and ``OUT/nsr.json`` atomically (a temp folder renamed into place only
after every gate passed). The same inputs give byte-identical model files.

``model.onnx`` is always portable: standard ONNX ops, IR version and opset that ONNX Runtime >= 1.17
(Python, C, Node, Web) loads. Conv forms: ``grouped``, ``matmul``, ``dense-mix`` (traced from the deploy
rewrite). ``auto`` decides by a rule (:mod:`.form_rule`); ``tune`` builds every candidate, checks its
parity, times it in ONNX Runtime on this machine and keeps the fastest (machine-specific; the timings go
into the manifest). ONNX Runtime's blocked ``nchwc`` form is not shipped: the runner builds it at load
for its own CPU (:mod:`nsr_deploy.runtimes.ort_specialise`); :func:`build_onnx` still writes it for the
bench.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from nsr_deploy.capabilities import EXPORT_FORMS, FORM_CHOICES, STATIC_BATCH_FORMS, TUNE_FORM
from nsr_deploy.errors import NSRError
from nsr_deploy.exporters.common import Stages, base_manifest, sha256_bytes, tool_versions
from nsr_deploy.exporters.form_rule import auto_form
from nsr_deploy.models.deploy import DeployNet

OPSETS = range(13, 21)  # Softmax over one axis from 13; the legacy exporter stops at 20
DEFAULT_OPSET = 17
DEFAULT_PATCH_BATCH = 16
MODEL_FILE = "model.onnx"
STATIC_FORMS = STATIC_BATCH_FORMS
LOAD_TIME_NOTE = ("ONNX Runtime on CPUs with NCHWc kernels (x86) rewrites it into its blocked form for the CPU it "
                  "runs on, checked against this file and cached; elsewhere it runs as is")


def check_options(conv_form: str, patch_batch: int | None, opset: int) -> None:
    if conv_form == "nchwc":
        raise NSRError("conv form 'nchwc' is no longer exported: model.onnx stays portable and the ONNX Runtime "
                       "runner rewrites it into the NCHWc form of the CPU it runs on, at load")
    if conv_form not in FORM_CHOICES:
        raise NSRError(f"unknown conv form {conv_form!r} (choose from {', '.join(FORM_CHOICES)})")
    if opset not in OPSETS:
        raise NSRError(f"unsupported opset {opset} (supported: {OPSETS.start}-{OPSETS.stop - 1})")
    if patch_batch is not None and patch_batch < 1:
        raise NSRError(f"patch batch must be >= 1, got {patch_batch}")


def dynamic_axes(conv_form: str) -> dict:
    spatial = {2: "height", 3: "width"}
    out_spatial = {2: "out_height", 3: "out_width"}
    if conv_form in STATIC_FORMS:
        return {"x": dict(spatial), "valid": dict(spatial), "y": dict(out_spatial)}
    return {"x": {0: "batch", **spatial}, "valid": {0: "batch", **spatial}, "y": {0: "batch", **out_spatial}}


def build_onnx(loaded, conv_form: str, patch_batch: int | None, opset: int = DEFAULT_OPSET,
               stages: Stages | None = None):
    """The checked ONNX model of the patch network in ``conv_form`` (traced forms: simplified too)."""
    if conv_form == "nchwc":
        return _build_nchwc(loaded, patch_batch or DEFAULT_PATCH_BATCH, opset, stages or Stages([], show=False))
    return _build_traced(loaded, conv_form, patch_batch, opset, stages or Stages([], show=False))


def _finish(model, loaded, conv_form: str, patch_batch: int | None, full_check: bool = True):
    """Producer, doc and the I/O contract inside the file (a bare model.onnx is self-describing)."""
    import onnx

    from nsr_deploy import __version__

    cfg = loaded.config
    model.producer_name = "nsr-deploy"
    model.producer_version = __version__
    model.doc_string = f"{cfg.kind} {cfg.task}, conv form {conv_form}"
    contract = base_manifest(loaded, conv_form, patch_batch, dynamic_axes(conv_form))
    props = {p.key: p.value for p in model.metadata_props}
    props["nsr_manifest"] = json.dumps(contract, sort_keys=True)
    onnx.helper.set_model_props(model, props)
    # the oldest IR version its opsets allow (IR 8 for opset 17): what older runtimes (ORT web / node) read
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as e:
        raise NSRError(f"the exported ONNX model fails the checker: {str(e).splitlines()[0]}") from None
    return model


def _build_nchwc(loaded, patch_batch: int, opset: int, stages: Stages):
    from nsr_deploy.exporters.nchwc import build_nchwc_onnx, mlas_block_size, unsupported_reason

    with stages.stage("rewrite"):
        block = mlas_block_size()
        why = unsupported_reason(loaded.config, block)
        if why:
            raise NSRError(f"conv form 'nchwc' is not available here: {why}")
        model = build_nchwc_onnx(loaded, patch_batch, block, opset)
    with stages.stage("check"):
        # ORT-internal ops have no public schema: the structural check runs, shape inference cannot
        return _finish(model, loaded, "nchwc", patch_batch, full_check=False)


def _build_traced(loaded, conv_form: str, patch_batch: int | None, opset: int, stages: Stages):
    import onnx
    import onnxsim
    import torch

    cfg = loaded.config
    static = conv_form in STATIC_BATCH_FORMS
    with stages.stage("rewrite"):
        deploy = DeployNet(loaded.net, conv_form, patch_batch if static else None).eval()
    with stages.stage("trace"):
        n = patch_batch if static else 2
        x = torch.rand(n, cfg.channels, cfg.patch_size, cfg.patch_size, generator=torch.Generator().manual_seed(0))
        valid = torch.ones(n, 1, cfg.patch_size, cfg.patch_size)
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(deploy, (x, valid), buf, dynamo=False, opset_version=opset,
                              input_names=["x", "valid"], output_names=["y"],
                              dynamic_axes=dynamic_axes(conv_form), do_constant_folding=True)
        model = onnx.load_from_string(buf.getvalue())
    with stages.stage("simplify"):
        model, ok = onnxsim.simplify(model)
        if not ok:
            raise NSRError("onnxsim could not validate the simplified model")
        _assert_dynamic_kept(model, dynamic_axes(conv_form))
    with stages.stage("check"):
        return _finish(model, loaded, conv_form, patch_batch)


def _assert_dynamic_kept(model, axes: dict) -> None:
    """onnxsim can freeze dynamic shapes: refuse a model whose dynamic axes became numbers."""
    values = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for name, dims in axes.items():
        shape = values[name].type.tensor_type.shape.dim
        for axis in dims:
            if shape[axis].HasField("dim_value"):
                raise NSRError(f"simplification froze dynamic axis {axis} of {name!r}")


def parity_gate(loaded, runner, tolerance: float, samples: list[np.ndarray] | None = None) -> dict:
    """Random patches and one real image through ``runner`` against the PyTorch reference."""
    from nsr_deploy.bench.parity import image_parity, patch_parity
    from nsr_deploy.runtimes.engine import Engine

    cfg = loaded.config
    n = runner.static_batch or 4
    results = [patch_parity(loaded.net, runner, n, cfg.patch_size, tolerance)]
    image, name = samples[0] if samples else default_sample(cfg.channels)
    engine = Engine(runner, cfg)
    results.append(image_parity(loaded.net, engine, image, tolerance, name))
    return {"tolerance_max_abs": tolerance, "passed": all(r.passed for r in results),
            "checks": [r.as_dict() for r in results]}


def default_sample(channels: int) -> tuple[np.ndarray, str]:
    """The first bundled sample photo as float32 CHW in [0, 1] (grey for 1-channel models)."""
    from PIL import Image

    from nsr_deploy.assets import sample_paths

    path = sample_paths()[0]
    img = Image.open(path).convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, np.float32) / 255.0
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(chw), path.name


NAME = "onnx"
STAGES = ["choose", "rewrite", "trace", "simplify", "check", "parity"]


def unavailable() -> str | None:
    for module in ("torch", "onnx", "onnxsim", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'nsr-deploy[export]')"
    return None


def candidate_forms() -> list[str]:
    """Forms timed by ``tune``: every portable form (only those ship)."""
    return list(EXPORT_FORMS)


def time_runner(runner, channels: int, batch: int, size: int, repeats: int = 3) -> float:
    """Median milliseconds of one call on ``batch`` patches of ``size``x``size`` (after a warm-up)."""
    import time

    from nsr_deploy.bench.parity import random_patches

    x = random_patches(channels, batch, size, seed=7)
    valid = np.ones((batch, 1, size, size), np.float32)
    runner.infer(x, valid)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.infer(x, valid)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def choose_form(loaded, batch: int, opset: int, threads: int | None, scratch: Path) -> tuple[str, dict]:
    """``tune``: build, parity-check and time every candidate in ONNX Runtime on this machine (as shipped,
    no load-time specialisation); the fastest that passes wins. Machine-specific by nature."""
    from nsr_deploy.bench.parity import FP32_MAX_ABS, patch_parity
    from nsr_deploy.runtimes.ort_runner import OrtRunner

    cfg = loaded.config
    report: dict[str, dict] = {}
    for form in candidate_forms():
        try:
            model = build_onnx(loaded, form, batch if form in STATIC_FORMS else None, opset)
        except NSRError as e:
            report[form] = {"status": "unavailable", "why": str(e)}
            continue
        path = scratch / f"candidate-{form}.onnx"
        path.write_bytes(model.SerializeToString())
        with OrtRunner(str(path), threads, specialise=False) as runner:
            check = patch_parity(loaded.net, runner, batch, cfg.patch_size, FP32_MAX_ABS)
            if not check.passed:
                report[form] = {"status": "failed parity", "max_abs": check.as_dict()["max_abs"]}
                continue
            report[form] = {"status": "ok", "ms": round(time_runner(runner, cfg.channels, batch, cfg.patch_size), 2)}
        path.unlink()
    timed = {f: r["ms"] for f, r in report.items() if r["status"] == "ok"}
    if not timed:
        raise NSRError("no conv form passed the parity gate in ONNX Runtime")
    return min(timed, key=timed.get), {"workload": f"{batch} patches of {cfg.patch_size}x{cfg.patch_size}",
                                       "threads": threads, "candidates": report, "machine_specific": True,
                                       "note": "timed on the exporting machine; another machine may rank the "
                                               "forms differently"}


def build(ctx) -> None:
    """Pipeline step: ``model.onnx`` into ``ctx.folder``, gated; starts the manifest."""
    from nsr_deploy.bench.parity import FP32_MAX_ABS
    from nsr_deploy.runtimes.ort_runner import OrtRunner

    opts, loaded = ctx.options, ctx.loaded
    check_options(opts.conv_form, opts.patch_batch, opts.opset)
    form, choice = opts.conv_form, None
    batch_for_static = opts.patch_batch or DEFAULT_PATCH_BATCH
    with ctx.stages.stage("choose"):
        if form == "auto":
            form, why = auto_form(loaded.config, ctx.targets)
            choice = {"auto": {"rule": why}}
        elif form == TUNE_FORM:
            form, tuned = choose_form(loaded, batch_for_static, opts.opset, opts.threads, ctx.scratch)
            choice = {"tune": tuned}
    batch = batch_for_static if form in STATIC_FORMS else None
    model = build_onnx(loaded, form, batch, opts.opset, ctx.stages)
    data = model.SerializeToString()
    (ctx.folder / MODEL_FILE).write_bytes(data)
    with ctx.stages.stage("parity"):
        with OrtRunner(str(ctx.folder / MODEL_FILE), opts.threads, specialise=False) as runner:
            parity = parity_gate(loaded, runner, FP32_MAX_ABS)
    if not parity["passed"]:
        worst = max(parity["checks"], key=lambda c: c["max_abs"])
        raise NSRError(f"parity gate failed: ONNX Runtime vs PyTorch reference max abs diff "
                       f"{worst['max_abs']:.3g} > {FP32_MAX_ABS:g} ({worst['check']}); nothing written")
    manifest = base_manifest(loaded, form, batch, dynamic_axes(form))
    manifest["opset"] = opts.opset
    target = {"file": MODEL_FILE, "sha256": sha256_bytes(data), "precision": "fp32", "runtime": "onnxruntime",
              "conv_form": form, "static_batch": batch, "portable": True, "ir_version": model.ir_version,
              "load_time": LOAD_TIME_NOTE}
    if choice:
        target.update(choice)
    manifest["targets"] = {"onnx": target}
    manifest["tools"] = tool_versions("torch", "onnx", "onnxsim", "onnxruntime")
    manifest["parity"] = {"onnxruntime/fp32": parity}
    ctx.manifest.update(manifest)


def build_portable(loaded, folder: Path, patch_batch: int | None, opset: int, form: str = "grouped") -> Path:
    """A portable ONNX model (for lowering into other runtimes) when model.onnx is ORT-only."""
    batch = (patch_batch or DEFAULT_PATCH_BATCH) if form in STATIC_FORMS else None
    path = folder / f"portable-{form}.onnx"
    path.write_bytes(build_onnx(loaded, form, batch, opset).SerializeToString())
    return path


def export_onnx(loaded, out: str | Path, conv_form: str = "grouped", patch_batch: int | None = DEFAULT_PATCH_BATCH,
                opset: int = DEFAULT_OPSET, force: bool = False, threads: int | None = None,
                show_progress: bool = True) -> dict:
    """Export, gate and write ``OUT/model.onnx`` + ``OUT/nsr.json``; returns the manifest."""
    from nsr_deploy.exporters.pipeline import ExportOptions, export

    check_options(conv_form, patch_batch, opset)
    opts = ExportOptions(conv_form=conv_form, patch_batch=patch_batch, opset=opset, force=force, threads=threads,
                         show_progress=show_progress)
    return export(loaded, out, "onnx", opts)
