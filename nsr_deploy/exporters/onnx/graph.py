"""The ONNX graph of the patch network: the deploy rewrite traced and simplified (``grouped``, ``matmul``,
``dense-mix``) or written directly in ONNX Runtime's blocked layout (``nchwc``, see :mod:`.nchwc`),
with its I/O contract inside the file and the full checker run. The same inputs give byte-identical
models.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

from nsr_deploy.core.capabilities import PORTABLE_FORM, STATIC_BATCH_FORMS
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.common import Stages, base_manifest
from nsr_deploy.models.deploy import DeployNet

DEFAULT_OPSET = 17
DEFAULT_PATCH_BATCH = 16
MODEL_FILE = "model.onnx"
STATIC_FORMS = STATIC_BATCH_FORMS


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
    # the file's own entry (no sha256: a file cannot hold its own digest), so a bare model.onnx says
    # how it is run as a manifest's targets would
    contract["targets"] = {"onnx": {"file": MODEL_FILE, "precision": "fp32", "runtime": "onnxruntime",
                                    "conv_form": conv_form, "static_batch": patch_batch}}
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
    from nsr_deploy.exporters.onnx.nchwc import build_nchwc_onnx, mlas_block_size, unsupported_reason

    with stages.stage("rewrite"):
        block = mlas_block_size()
        why = unsupported_reason(loaded.config, block)
        if why:
            raise NSRError(f"conv form 'nchwc' is not available here: {why}")
        model = build_nchwc_onnx(loaded, patch_batch, block, opset)
    with stages.stage("check"):
        # ORT-internal ops have no public schema: the structural check runs, shape inference cannot
        return _finish(model, loaded, "nchwc", patch_batch, full_check=False)


def trace_simplified(module, inputs: tuple, input_names: list[str], opset: int, dynamic: dict | None = None,
                     stages: Stages | None = None, what: str = "the simplified model"):
    """``module`` traced on ``inputs`` (output ``y``), then simplified by onnxsim: the one path from a
    PyTorch module to an ONNX graph, for whole networks and the bench's single layers alike."""
    import onnx
    import onnxsim
    import torch

    stages = stages or Stages([], show=False)
    with stages.stage("trace"):
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=["y"], dynamic_axes=dynamic, do_constant_folding=True)
        model = onnx.load_from_string(buf.getvalue())
    with stages.stage("simplify"):
        model, ok = onnxsim.simplify(model)
        if not ok:
            raise NSRError(f"onnxsim could not validate {what}")
    return model


def _build_traced(loaded, conv_form: str, patch_batch: int | None, opset: int, stages: Stages):
    import torch

    cfg = loaded.config
    static = conv_form in STATIC_BATCH_FORMS
    with stages.stage("rewrite"):
        deploy = DeployNet(loaded.net, conv_form, patch_batch if static else None).eval()
    n = patch_batch if static else 2
    x = torch.rand(n, cfg.channels, cfg.patch_size, cfg.patch_size, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(n, 1, cfg.patch_size, cfg.patch_size)
    model = trace_simplified(deploy, (x, valid), ["x", "valid"], opset, dynamic_axes(conv_form), stages)
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


def build_portable(loaded, folder: Path, patch_batch: int | None, opset: int, form: str = PORTABLE_FORM) -> Path:
    """A portable ONNX model (for lowering into other runtimes) when model.onnx is ORT-only."""
    batch = (patch_batch or DEFAULT_PATCH_BATCH) if form in STATIC_FORMS else None
    path = folder / f"portable-{form}.onnx"
    path.write_bytes(build_onnx(loaded, form, batch, opset).SerializeToString())
    return path
