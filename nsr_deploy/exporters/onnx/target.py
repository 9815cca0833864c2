"""ONNX target: deploy rewrite -> trace -> onnxsim -> full checker (:mod:`.graph`), then the
parity gate in ONNX Runtime.

Writes ``OUT/model.onnx`` and ``OUT/nsr.json`` atomically (a temp folder renamed into place only
after every gate passed). The same inputs give byte-identical model files.

A fixed-batch model (``grouped``: the batch is in ``Conv.group``, an attribute) gets a batch-1 twin,
``model-b1.onnx`` (``targets.onnx.batch_one``): an app runs a whole small image or a short last call on it
one window at a time instead of padding it to the fixed batch with copies (16 times the pixels).

``model.onnx`` is always portable: standard ONNX ops, the oldest IR version its opset allows (ONNX
Runtime >= 1.17 in Python, C, Node and Web loads it). Conv forms: ``grouped``, ``matmul``, ``dense-mix``.
``auto`` decides by a rule (:mod:`~nsr_deploy.exporters.form_rule`); ``tune`` builds every candidate, checks its parity,
times it in ONNX Runtime on this machine and keeps the fastest (:mod:`.tune`; machine-specific,
the timings go into the manifest). ONNX Runtime's blocked ``nchwc`` form is not shipped: its runner
builds it at load for its own CPU (:mod:`nsr_deploy.runtimes.onnxruntime.specialise`).
"""

from __future__ import annotations

from dataclasses import replace

from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.budgets import check_batch, check_threads
from nsr_deploy.core.capabilities import (
    AUTO_FORM,
    FORM_CHOICES,
    OPENVINO_ONLY_FORMS,
    ORT_ONLY_FORMS,
    PORTABLE_FORM,
    STATIC_BATCH_FORMS,
    TUNE_FORM,
)
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.common import base_manifest, sha256_bytes, tool_versions
from nsr_deploy.exporters.onnx.graph import DEFAULT_PATCH_BATCH, MODEL_FILE, build_onnx, dynamic_axes
from nsr_deploy.exporters.target import Artifact

OPSETS = range(13, 21)  # Softmax over one axis from 13; the legacy exporter stops at 20
NAME = "onnx"
STAGES = ["choose", "rewrite", "trace", "simplify", "check", "batch-one", "parity"]
BATCH_ONE_FILE = "model-b1.onnx"
LOAD_TIME_NOTE = ("ONNX Runtime on CPUs with NCHWc kernels (x86) rewrites it into its blocked form for the CPU it "
                  "runs on, checked against this file and cached; elsewhere it runs as is")


def check_options(conv_form: str, patch_batch: int | None, opset: int, threads: int | None = None) -> None:
    """The options every export takes, refused before anything is loaded: a batch beyond what a manifest
    may hold, or more threads than this process has CPUs, would only exhaust memory or deadlock."""
    if conv_form in ORT_ONLY_FORMS:
        raise NSRError(f"conv form {conv_form!r} is no longer exported: model.onnx stays portable and the ONNX "
                       "Runtime runner rewrites it into the NCHWc form of the CPU it runs on, at load")
    if conv_form not in FORM_CHOICES:
        raise NSRError(f"unknown conv form {conv_form!r} (choose from {', '.join(FORM_CHOICES)})")
    if opset not in OPSETS:
        raise NSRError(f"unsupported opset {opset} (supported: {OPSETS.start}-{OPSETS.stop - 1})")
    check_batch(patch_batch, "--patch-batch")
    check_threads(threads, "--threads")


def validate_options(options) -> None:
    """Pipeline hook, before any work: the Python API's options meet the same bounds as the CLI's."""
    check_options(options.conv_form, options.patch_batch, options.opset, options.threads)


def unavailable() -> str | None:
    for module in ("torch", "onnx", "onnxsim", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'nsr-deploy[export]')"
    return None



WEBGPU = "tests/examples/test_web_example.py::test_page_reproduces_the_conformance_vectors_on_webgpu"
WEBGPU_WHERE = ("WebGPU (onnxruntime-web's WebGPU execution provider, every compute node on it), run in "
                "headless Chromium on its SwiftShader software adapter")
ORT_MIN = "1.17"  # the IR version / opset the export writes is one ONNX Runtime >= 1.17 reads


def runs_on(entry: dict, tools: dict) -> list:
    """Where ``model.onnx`` runs (``nsr.json`` ``runs_on``, written by :mod:`nsr_deploy.exporters.runs_on`)."""
    from nsr_deploy.exporters import runs_on as r

    ort = tools.get("onnxruntime", "")
    batch = f", fixed batch of {entry['static_batch']} patches" if entry.get("static_batch") else ""
    places = [r.verified(f"ONNX Runtime {ort} on the CPU it was exported on{batch}", r.GATE),
              r.verified("ONNX Runtime (Python) on x86-64 CPUs", r.CONFORMANCE),
              r.verified("ONNX Runtime on x86-64 CPUs, rewritten at load into its blocked NCHWc form for that CPU "
                         "(cached)", "tests/runtimes/onnxruntime/test_ort_specialise.py::"
                         "test_specialised_model_equals_the_portable_one"),
              r.verified("the runtime-only install (no torch)", r.RUNTIME_EXTRA),
              r.verified("OpenVINO's C++ API reading model.onnx (examples/cpp)",
                         "tests/examples/test_cpp_example.py::test_cpp_reproduces_the_conformance_vectors"),
              r.verified("Node.js (onnxruntime-node) and browsers (onnxruntime-web, WebAssembly)",
                         "tests/exporters/test_portable_exports.py::test_default_onnx_runs_in_onnxruntime_node_and_web")]
    if entry.get("conv_form") == "grouped":  # the form the ARM64 and WebGPU runs export
        places.append(r.verified(f"ONNX Runtime (Python) on {r.ARM64_WHERE}", r.ARM64))
        if entry.get("precision", "fp32") == "fp32":
            places.append(r.verified(f"browsers on {WEBGPU_WHERE}", WEBGPU))
        else:
            places.append(r.unverified(f"browsers on {WEBGPU_WHERE}",
                                       f"the WebGPU run executes fp32 files, not {entry.get('precision')}"))
    else:
        other = f"the grouped form, not {entry.get('conv_form')}"
        places.append(r.unverified("ONNX Runtime on ARM64 CPUs", f"the emulated ARM64 run executes {other}"))
        places.append(r.unverified(f"browsers on {WEBGPU_WHERE}", f"the WebGPU run executes {other}"))
    return [*places,
            r.unverified(f"ONNX Runtime releases older than {ort} (IR version {entry.get('ir_version')} needs "
                         f">= {ORT_MIN})", "only the installed release runs here"),
            r.unverified("ONNX Runtime's GPU execution providers (CUDA, DirectML, CoreML), and WebGPU on a "
                         "hardware GPU", "no GPU here (WebGPU ran on Chromium's software adapter only)"),
            r.unverified("other ONNX runtimes and the C# / Java bindings", "not run here; the graph uses standard ops "
                         "only (Conv, MatMul, Softmax, ReduceMean, DepthToSpace)")]


def build(ctx) -> Artifact:
    """Pipeline step: ``model.onnx`` into ``ctx.folder``; the I/O contract the manifest starts with."""
    opts, loaded = ctx.options, ctx.loaded
    check_options(opts.conv_form, opts.patch_batch, opts.opset)
    form, choice = opts.conv_form, None
    batch_for_static = opts.patch_batch or DEFAULT_PATCH_BATCH
    with ctx.stages.stage("choose"):
        if form == AUTO_FORM:
            from nsr_deploy.exporters.form_rule import auto_form

            form, why = auto_form(loaded.config)
            choice = {"auto": {"rule": why}}
        elif form == TUNE_FORM:
            from nsr_deploy.exporters.onnx.tune import choose_form

            form, tuned = choose_form(loaded, batch_for_static, opts.opset, opts.threads, ctx.scratch)
            choice = {"tune": tuned}
        elif form in OPENVINO_ONLY_FORMS:  # OpenVINO builds its own graph; model.onnx stays portable
            choice = {"portable_instead_of": {form: f"an OpenVINO-only form: model.onnx is {PORTABLE_FORM}"}}
            form = PORTABLE_FORM
    batch = batch_for_static if form in STATIC_BATCH_FORMS else None
    model = build_onnx(loaded, form, batch, opts.opset, ctx.stages)
    data = model.SerializeToString()
    (ctx.folder / MODEL_FILE).write_bytes(data)
    contract = {**base_manifest(loaded, form, batch, dynamic_axes(form)), "opset": opts.opset}
    entry = {"file": MODEL_FILE, "sha256": sha256_bytes(data), "precision": "fp32", "runtime": "onnxruntime",
             "conv_form": form, "static_batch": batch, "portable": True, "ir_version": model.ir_version,
             "load_time": LOAD_TIME_NOTE}
    if batch and batch > 1:
        with ctx.stages.stage("batch-one"):
            entry["batch_one"] = _write_batch_one(loaded, form, opts.opset, ctx.folder)
    if choice:
        entry.update(choice)
    return Artifact(NAME, ctx.folder / MODEL_FILE, "ONNX Runtime fp32", "onnxruntime/fp32", entry,
                    tool_versions("torch", "onnx", "onnxsim", "onnxruntime"), contract)


def _write_batch_one(loaded, form: str, opset: int, folder) -> dict:
    """``model-b1.onnx``: the same network traced at batch 1, and its manifest entry."""
    data = build_onnx(loaded, form, 1, opset).SerializeToString()
    (folder / BATCH_ONE_FILE).write_bytes(data)
    return {"file": BATCH_ONE_FILE, "sha256": sha256_bytes(data), "static_batch": 1}


def gate(artifact: Artifact, ctx) -> GateResult:
    """Pipeline step: ONNX Runtime on ``model.onnx`` against the PyTorch reference, fp32 tolerance."""
    from nsr_deploy.checks import verdicts
    from nsr_deploy.checks.compare import patch_parity
    from nsr_deploy.checks.gates import GATE_PATCHES, float_gate
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    # the shipped file as it is: the runner's load-time specialisation checks itself against it
    with ctx.stages.stage("parity"):
        with OrtRunner(str(artifact.path), ctx.options.threads, specialise=False) as runner:
            result = float_gate(ctx.loaded.net, runner, verdicts.FP32_MAX_ABS)
        single = artifact.entry.get("batch_one")
        if single is None:
            return result
        with OrtRunner(str(artifact.path.parent / single["file"]), ctx.options.threads, specialise=False) as runner:
            check = patch_parity(ctx.loaded.net, runner, GATE_PATCHES, ctx.loaded.config.patch_size,
                                 verdicts.FP32_MAX_ABS)
        return replace(result, checks=(*result.checks, replace(check, check="batch_one_patches")))


