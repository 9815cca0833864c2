"""ONNX target: deploy rewrite -> trace -> onnxsim -> full checker (:mod:`.onnx_graph`), then the
parity gate in ONNX Runtime.

Writes ``OUT/model.onnx`` and ``OUT/nsr.json`` atomically (a temp folder renamed into place only
after every gate passed). The same inputs give byte-identical model files.

Conv forms: the portable ``grouped``, ``matmul``, ``dense-mix`` (traced from the deploy rewrite) and
the ONNX-Runtime-only ``nchwc`` (written directly in ORT's blocked layout, see :mod:`.nchwc`).
``auto`` builds every candidate, checks its parity, times it in ONNX Runtime on this machine and
keeps the fastest (:mod:`.onnx_auto`); the timings go into the manifest.
"""

from __future__ import annotations

from nsr_deploy.capabilities import AUTO_FORM, FORM_CHOICES, ORT_ONLY_FORMS, STATIC_BATCH_FORMS
from nsr_deploy.checks.results import GateResult
from nsr_deploy.errors import NSRError
from nsr_deploy.exporters.common import base_manifest, sha256_bytes, tool_versions
from nsr_deploy.exporters.onnx_graph import DEFAULT_PATCH_BATCH, MODEL_FILE, build_onnx, dynamic_axes
from nsr_deploy.exporters.target import Artifact

OPSETS = range(13, 21)  # Softmax over one axis from 13; the legacy exporter stops at 20
NAME = "onnx"
STAGES = ["choose", "rewrite", "trace", "simplify", "check", "parity"]


def check_options(conv_form: str, patch_batch: int | None, opset: int) -> None:
    if conv_form not in FORM_CHOICES:
        raise NSRError(f"unknown conv form {conv_form!r} (choose from {', '.join(FORM_CHOICES)})")
    if opset not in OPSETS:
        raise NSRError(f"unsupported opset {opset} (supported: {OPSETS.start}-{OPSETS.stop - 1})")
    if patch_batch is not None and patch_batch < 1:
        raise NSRError(f"patch batch must be >= 1, got {patch_batch}")


def unavailable() -> str | None:
    for module in ("torch", "onnx", "onnxsim", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'nsr-deploy[export]')"
    return None


def build(ctx) -> Artifact:
    """Pipeline step: ``model.onnx`` into ``ctx.folder``; the I/O contract the manifest starts with."""
    opts, loaded = ctx.options, ctx.loaded
    check_options(opts.conv_form, opts.patch_batch, opts.opset)
    form, auto = opts.conv_form, None
    batch_for_static = opts.patch_batch or DEFAULT_PATCH_BATCH
    if form == AUTO_FORM:
        from nsr_deploy.exporters.onnx_auto import choose_form

        with ctx.stages.stage("choose"):
            form, auto = choose_form(loaded, batch_for_static, opts.opset, opts.threads, ctx.scratch)
    batch = batch_for_static if form in STATIC_BATCH_FORMS else None
    model = build_onnx(loaded, form, batch, opts.opset, ctx.stages)
    data = model.SerializeToString()
    (ctx.folder / MODEL_FILE).write_bytes(data)
    contract = {**base_manifest(loaded, form, batch, dynamic_axes(form)), "opset": opts.opset}
    portable = form not in ORT_ONLY_FORMS
    entry = {"file": MODEL_FILE, "sha256": sha256_bytes(data), "precision": "fp32", "runtime": "onnxruntime",
             "conv_form": form, "static_batch": batch, "portable": portable}
    if not portable:
        entry["nchwc_block"] = int({p.key: p.value for p in model.metadata_props}["nsr_nchwc_block"])
        entry["note"] = ("ONNX Runtime on x86 only (internal com.microsoft.nchwc ops); the block size must match "
                         "the machine's; other runtimes get a portable form")
    if auto:
        entry["auto"] = auto
    return Artifact(NAME, ctx.folder / MODEL_FILE, "ONNX Runtime fp32", "onnxruntime/fp32", entry,
                    tool_versions("torch", "onnx", "onnxsim", "onnxruntime"), contract)


def gate(artifact: Artifact, ctx) -> GateResult:
    """Pipeline step: ONNX Runtime on ``model.onnx`` against the PyTorch reference, fp32 tolerance."""
    from nsr_deploy.checks import verdicts
    from nsr_deploy.checks.gates import float_gate
    from nsr_deploy.runtimes.ort_runner import OrtRunner

    with ctx.stages.stage("parity"), OrtRunner(str(artifact.path), ctx.options.threads) as runner:
        return float_gate(ctx.loaded.net, runner, verdicts.FP32_MAX_ABS)


