"""ONNX target: deploy rewrite -> trace -> onnxsim -> full checker -> parity gate.

Writes ``OUT/model.onnx`` and ``OUT/nsr.json`` atomically (a temp folder renamed into place only
after every gate passed). The same inputs give byte-identical model files.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from nsr_deploy.errors import NSRError
from nsr_deploy.exporters.common import Stages, base_manifest, sha256_bytes, tool_versions
from nsr_deploy.models.deploy import CONV_FORMS, STATIC_BATCH_FORMS, DeployNet

OPSETS = range(13, 21)  # Softmax over one axis from 13; the legacy exporter stops at 20
DEFAULT_OPSET = 17
DEFAULT_PATCH_BATCH = 16
MODEL_FILE = "model.onnx"


def check_options(conv_form: str, patch_batch: int | None, opset: int) -> None:
    if conv_form not in CONV_FORMS:
        raise NSRError(f"unknown conv form {conv_form!r} (choose from {', '.join(CONV_FORMS)})")
    if opset not in OPSETS:
        raise NSRError(f"unsupported opset {opset} (supported: {OPSETS.start}-{OPSETS.stop - 1})")
    if patch_batch is not None and patch_batch < 1:
        raise NSRError(f"patch batch must be >= 1, got {patch_batch}")


def dynamic_axes(conv_form: str) -> dict:
    spatial = {2: "height", 3: "width"}
    out_spatial = {2: "out_height", 3: "out_width"}
    if conv_form in STATIC_BATCH_FORMS:
        return {"x": dict(spatial), "valid": dict(spatial), "y": dict(out_spatial)}
    return {"x": {0: "batch", **spatial}, "valid": {0: "batch", **spatial}, "y": {0: "batch", **out_spatial}}


def build_onnx(loaded, conv_form: str, patch_batch: int | None, opset: int = DEFAULT_OPSET,
               stages: Stages | None = None):
    """The simplified, fully checked ONNX model of the patch network."""
    import onnx
    import onnxsim
    import torch

    from nsr_deploy import __version__

    stages = stages or Stages([], show=False)
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
        model.producer_name = "nsr-deploy"
        model.producer_version = __version__
        model.doc_string = f"{cfg.kind} {cfg.task}, conv form {conv_form}"
        # The I/O contract travels inside the file too, so a bare model.onnx is self-describing.
        contract = base_manifest(loaded, conv_form, patch_batch, dynamic_axes(conv_form))
        onnx.helper.set_model_props(model, {"nsr_manifest": json.dumps(contract, sort_keys=True)})
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise NSRError(f"the exported ONNX model fails the checker: {str(e).splitlines()[0]}") from None
    return model


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
STAGES = ["rewrite", "trace", "simplify", "check", "parity"]


def unavailable() -> str | None:
    for module in ("torch", "onnx", "onnxsim", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'nsr-deploy[export]')"
    return None


def build(ctx) -> None:
    """Pipeline step: ``model.onnx`` into ``ctx.folder``, gated; starts the manifest."""
    from nsr_deploy.bench.parity import FP32_MAX_ABS
    from nsr_deploy.runtimes.ort_runner import OrtRunner

    opts, loaded = ctx.options, ctx.loaded
    check_options(opts.conv_form, opts.patch_batch, opts.opset)
    static = opts.conv_form in STATIC_BATCH_FORMS
    batch = (opts.patch_batch or DEFAULT_PATCH_BATCH) if static else None
    model = build_onnx(loaded, opts.conv_form, batch, opts.opset, ctx.stages)
    data = model.SerializeToString()
    (ctx.folder / MODEL_FILE).write_bytes(data)
    with ctx.stages.stage("parity"):
        with OrtRunner(str(ctx.folder / MODEL_FILE), opts.threads) as runner:
            parity = parity_gate(loaded, runner, FP32_MAX_ABS)
    if not parity["passed"]:
        worst = max(parity["checks"], key=lambda c: c["max_abs"])
        raise NSRError(f"parity gate failed: ONNX Runtime vs PyTorch reference max abs diff "
                       f"{worst['max_abs']:.3g} > {FP32_MAX_ABS:g} ({worst['check']}); nothing written")
    manifest = base_manifest(loaded, opts.conv_form, batch, dynamic_axes(opts.conv_form))
    manifest["opset"] = opts.opset
    manifest["targets"] = {"onnx": {"file": MODEL_FILE, "sha256": sha256_bytes(data), "precision": "fp32",
                                    "runtime": "onnxruntime"}}
    manifest["tools"] = tool_versions("torch", "onnx", "onnxsim", "onnxruntime")
    manifest["parity"] = {"onnxruntime/fp32": parity}
    ctx.manifest.update(manifest)


def export_onnx(loaded, out: str | Path, conv_form: str = "grouped", patch_batch: int | None = DEFAULT_PATCH_BATCH,
                opset: int = DEFAULT_OPSET, force: bool = False, threads: int | None = None,
                show_progress: bool = True) -> dict:
    """Export, gate and write ``OUT/model.onnx`` + ``OUT/nsr.json``; returns the manifest."""
    from nsr_deploy.exporters.pipeline import ExportOptions, export

    check_options(conv_form, patch_batch, opset)
    opts = ExportOptions(conv_form=conv_form, patch_batch=patch_batch, opset=opset, force=force, threads=threads,
                         show_progress=show_progress)
    return export(loaded, out, "onnx", opts)
