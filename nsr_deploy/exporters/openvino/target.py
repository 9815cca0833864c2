"""OpenVINO target: the parity-checked ONNX model -> OpenVINO IR (``model.xml`` + ``model.bin``).

    nsr-deploy export ckpt.pt --target openvino [--precision fp32|fp16|bf16|int8] [--calib DIR]

Precisions, and the gate each must pass before the export folder appears (pipeline: temp folder,
renamed only on success):

``fp32``  weights stored f32. ``openvino.save_model`` compresses weights to fp16 unless told not to,
          so we always pass ``compress_to_fp16`` explicitly. Gate: max abs diff <= 1e-4 against the
          PyTorch reference, on random patches and a real image.
``fp16``  weights stored f16 in the IR (half the file). OpenVINO decompresses them and computes in
          f32 because the runner pins ``INFERENCE_PRECISION_HINT=f32`` (AMX / bf16 CPUs would
          otherwise default to bf16 execution). The sparsity softmax and the kernel mixing must run
          in f32: the compiled model's runtime graph is checked for it. Gate: max abs <= 5e-3 and PSNR
          of the restored image against the fp32 reference >= 45 dB.
``bf16``  weights stored f32; the manifest and the IR say bf16 and the runner compiles with
          ``INFERENCE_PRECISION_HINT=bf16`` on CPUs with AVX-512 BF16 or AMX (refused at export elsewhere,
          :mod:`nsr_deploy.runtimes.openvino.cpu_bf16`). The pooling MLP, the softmax and the kernel mixing carry
          OpenVINO's ``precise`` attribute (:mod:`.precise`) and run f32 (checked in the compiled
          model). Gate (:mod:`nsr_deploy.checks.bf16`): max abs and PSNR against the fp32 reference on random
          patches and a real image, and the task PSNR drop from fp32 on the bundled photos.
``int8``  NNCF post-training quantization, see :mod:`~nsr_deploy.exporters.openvino.quantize.nncf_int8`. Gate:
          task PSNR against ground truth drops <= 0.3 dB from the fp32 reference; one retry with the
          tail / skip convs float. The manifest lists which layers run int8 and why the others don't.
          Ground truth: clean images (the bundled samples) degraded as the model's task says: the
          bundled metadata's task (sr / noise / jpeg), else bicubic SR when scale > 1 and Gaussian
          noise, sigma 25, at scale 1 (:mod:`~nsr_deploy.checks.task`).

Graph: a sparse model's IR is built ``folded`` from OpenVINO opsets (:mod:`.folded`) when the conv
form is ``auto`` or ``folded`` (the rule: :func:`~.form_rule.openvino_form`); otherwise, and for dense
models, it is lowered from the ONNX model. Shapes: ``folded`` and ``grouped`` have a static patch batch
(the kernels' first dim; ONNX ``Conv.group`` is an attribute), the other forms are dynamic in batch and
size; the runner fixes them at load time on request (``OvRunner(tile_batch=..., shape=...)``) without
re-export. The IR carries the manifest's I/O contract and its precision in its rt_info, so a bare
``model.xml`` describes itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from nsr_deploy.checks.gates import precision_gate
from nsr_deploy.checks.results import GateResult
from nsr_deploy.checks.samples import sample_folder
from nsr_deploy.core.capabilities import BF16_NEEDS, PRECISIONS_OF_TARGET
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.common import sha256_bytes
from nsr_deploy.exporters.openvino.quantize.nncf_import import require_nncf
from nsr_deploy.exporters.target import Artifact

NAME = "openvino"
STAGES = ["openvino-convert", "openvino-compress", "openvino-parity"]
MODEL_FILE = "model.xml"
PRECISIONS = PRECISIONS_OF_TARGET["openvino"]
WEIGHTS_STORED = {"fp32": "f32", "fp16": "f16", "bf16": "f32 (computed in bf16 by the CPU plugin)",
                  "int8": "i8 for the quantized convs, f32 for the rest"}
MUST_RUN_F32 = ("softmax", "kernel_mixing")
BF16_MUST_RUN_F32 = ("pooling_mlp", *MUST_RUN_F32)  # marked precise in a bf16 IR
EXECUTION = {"bf16": "bf16 where the CPU has AVX-512 BF16 or AMX (INFERENCE_PRECISION_HINT=bf16; the runner falls "
                     "back to f32 elsewhere); pooling MLP, softmax and kernel mixing f32",
             "int8": "f32 (INFERENCE_PRECISION_HINT pinned by the runner); int8 layers run int8"}
RUNTIME_PRECISION_NOTE = ("per op role, the runtimePrecision the CPU plugin's runtime graph reports; on ops with "
                          "weights 'f16' reflects the half weights (their outputs stay f32), 'u8'/'i8' is int8 "
                          "execution")
CONTRACT_KEYS = ("format", "contract_version", "model", "source", "io", "semantics", "conv_form", "opset")


def unavailable() -> str | None:
    from nsr_deploy.runtimes.openvino.runner import unavailable as runtime_unavailable

    return runtime_unavailable()



def runs_on(entry: dict, tools: dict) -> list:
    """Where the IR runs: the OpenVINO that wrote it or newer, on the CPU plugins run here."""
    from nsr_deploy.exporters import runs_on as r

    precision, ov = entry.get("precision"), tools.get("openvino")
    places = [r.verified(f"OpenVINO {ov} CPU plugin on the CPU it was exported on, precision {precision}", r.GATE)]
    if precision == "fp32":
        places.append(r.verified("OpenVINO's CPU plugin on x86-64 CPUs", r.CONFORMANCE))
        places.append(r.verified("the runtime-only install (no torch)", r.RUNTIME_EXTRA))
        places.append(r.verified(f"OpenVINO's ARM CPU plugin on {r.ARM64_WHERE}", r.ARM64))
    else:
        places.append(r.unverified("OpenVINO's ARM CPU plugin on ARM64 CPUs",
                                   f"the emulated ARM64 run executes the fp32 IR, not {precision}"))
    return [*places, r.unverified(f"OpenVINO releases newer than {ov}, and its GPU / NPU plugins",
                                  "only the installed release and the CPU plugin run here")]


def validate_options(options) -> None:
    """Refuse what this target cannot honour before any work (the pipeline calls it up front)."""
    if options.precision not in PRECISIONS:
        raise NSRError(f"OpenVINO supports precisions {', '.join(PRECISIONS)}, not {options.precision!r}")
    if options.precision == "bf16":
        from nsr_deploy.runtimes.openvino.cpu_bf16 import bf16_unavailable

        why = bf16_unavailable()
        if why:
            raise NSRError(f"--precision bf16 needs {BF16_NEEDS}: {why}")
    if options.precision == "int8":
        require_nncf()
        if options.calib:
            from nsr_deploy.checks.task import image_paths

            image_paths(options.calib)  # a folder with images in it, or a one-line error now
    elif options.calib:
        raise NSRError(f"--calib is for int8; precision {options.precision} needs no calibration")


# -- lowering --------------------------------------------------------------------------------
def convert(onnx_path: str | Path):
    """``ov.Model`` of the ONNX file; the I/O names must survive (apps bind them by name).

    Read by the ONNX frontend (``Core.read_model``), not ``ov.convert_model``: the converter sends
    usage telemetry from a forked process, which is network traffic nobody asked for and a fork that
    deadlocks an export running beside other threads (measured: an export with one busy numpy thread
    hung for good)."""
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    try:
        model = ov.Core().read_model(str(onnx_path))
    except Exception as e:  # the converter raises several exception types
        raise NSRError(f"OpenVINO cannot convert {Path(onnx_path).name} ({str(e).strip().splitlines()[-1][:200]})") \
            from None
    inputs = sorted(name for i in model.inputs for name in i.get_names())
    outputs = sorted(name for o in model.outputs for name in o.get_names())
    if not {"x", "valid"} <= set(inputs) or "y" not in outputs:
        raise NSRError(f"the converted IR lost its I/O names (inputs {inputs}, outputs {outputs})")
    return model


def save(model, path: Path, precision: str, contract: dict) -> None:
    """Write ``model.xml`` + ``model.bin``: half weights only for fp16 (``save_model`` defaults to half).
    int8 models from NNCF count as pre-optimised: OpenVINO stores their quantized weights as int8."""
    from nsr_deploy.runtimes.openvino.quiet_import import ov
    from nsr_deploy.runtimes.openvino.runner import RT_INFO_ROOT

    model.set_rt_info(precision, [RT_INFO_ROOT, "precision"])
    own = {"openvino": {"file": path.name, "weights": path.with_suffix(".bin").name, "precision": precision}}
    model.set_rt_info(json.dumps({**contract, "targets": own}, sort_keys=True), [RT_INFO_ROOT, "manifest"])
    ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")


def contract_of(manifest: dict, onnx_path: Path) -> dict:
    """The I/O contract (no targets, tools or parity) of the model we lower: what a bare IR needs to be
    used correctly. Taken from the ONNX file itself, which may be a portable twin of an ORT-only
    ``model.onnx`` (conv form ``nchwc``), so its form and batch are the ones the IR really has."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    contract = json.loads(props["nsr_manifest"]) if "nsr_manifest" in props else {}
    base = {k: manifest[k] for k in CONTRACT_KEYS if k in manifest}
    return {**base, **{k: contract[k] for k in CONTRACT_KEYS if k in contract}}


def static_batch_of(model) -> int | None:
    """The IR's fixed patch batch, or None when the batch is dynamic."""
    batch = model.input("x").get_partial_shape()[0]
    return batch.get_length() if batch.is_static else None


# -- gates -----------------------------------------------------------------------------------
def float_gate(loaded, runner, precision: str, samples=None) -> GateResult:
    """fp32 / fp16 parity against the PyTorch reference (random patches + a real image); fp16 is also
    held to a PSNR floor against the fp32 reference on the real image."""
    return precision_gate(loaded.net, runner, precision, samples[0] if samples else None)


def check_execution(runner, ops, precision: str) -> dict[str, list[str]]:
    """Role -> precisions the CPU plugin runs it in; the softmax and kernel mixing must be f32."""
    from nsr_deploy.exporters.openvino.op_roles import runtime_precisions

    used = runtime_precisions(runner.runtime_ops(), ops)
    for role in BF16_MUST_RUN_F32 if precision == "bf16" else MUST_RUN_F32:
        if role in used and used[role] != ["f32"]:
            raise NSRError(f"OpenVINO {precision}: the {role.replace('_', ' ')} would run in "
                           f"{'/'.join(used[role])}, not f32; nothing written")
    return used


# -- the pipeline step -----------------------------------------------------------------------
def build(ctx) -> Artifact:
    """Pipeline step: ``model.xml`` + ``model.bin`` into ``ctx.folder``. int8's build searches with its
    task gate (a retry with the last layers float); the gate step then returns the kept attempt's."""
    from nsr_deploy.exporters.form_rule import openvino_form
    from nsr_deploy.exporters.openvino.op_roles import classify
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    validate_options(ctx.options)
    precision = ctx.options.precision
    path = ctx.folder / MODEL_FILE
    form, why = openvino_form(ctx.loaded.config, ctx.options.conv_form)
    with ctx.stages.stage("openvino-convert"):
        if form:
            model, contract = _folded(ctx, form)
        else:
            contract = contract_of(ctx.manifest, ctx.onnx_path)
            model = convert(ctx.onnx_path)
        ops = classify(model)
    state, entry = ops, ({"auto": {"rule": why}} if form and why != "asked for" else {})
    if precision == "int8" and form:
        # a folded sparse model: every conv int8, the per-patch ones included (NNCF would leave those float)
        state, more = _build_int8_sparse(ctx, path, contract, static_batch_of(model))  # same I/O as folded
        entry.update(more)
    elif precision == "int8":
        state, more = _build_int8(ctx, model, ops, path, contract)
        entry.update(more)
    else:
        with ctx.stages.stage("openvino-compress"):
            save(model, path, precision, contract)
            if precision == "bf16":
                from nsr_deploy.exporters.openvino.op_roles import routing_names
                from nsr_deploy.exporters.openvino.precise import mark_precise

                mark_precise(path, routing_names(model, ops, BF16_MUST_RUN_F32))
    tools = {"openvino": metadata.version("openvino"), "openvino_build": ov.get_version()}
    if precision == "int8" and not form:
        tools["nncf"] = metadata.version("nncf")
    return Artifact(NAME, path, f"OpenVINO {precision}", f"openvino/{precision}",
                    {**_target_entry(path, precision, contract, static_batch_of(model)), **entry}, tools, state=state)


def gate(artifact: Artifact, ctx) -> GateResult:
    """Pipeline step: fp32 / fp16 against the PyTorch reference, and the CPU plugin's execution precisions
    checked (the softmax and kernel mixing must run f32); int8: the kept attempt's task gate."""
    if isinstance(artifact.state, GateResult):
        return artifact.state
    precision = ctx.options.precision
    with ctx.stages.stage("openvino-parity"), _runner(ctx, artifact.path) as runner:
        result = _bf16_gate(ctx, runner) if precision == "bf16" else float_gate(ctx.loaded, runner, precision)
        if not result.passed:
            return result
        used = check_execution(runner, artifact.state, precision)
        facts = {"runtime_precisions": used, "runtime_precisions_note": RUNTIME_PRECISION_NOTE,
                 "compile_seconds": round(runner.load_seconds, 3)}
    return replace(result, facts=facts)


def _bf16_gate(ctx, runner) -> GateResult:
    from nsr_deploy.checks.bf16 import bf16_gate
    from nsr_deploy.checks.task import task_of

    task = task_of(ctx.loaded)
    references, source = _gate_references(ctx, task)
    return bf16_gate(ctx.loaded.net, runner, references, task, source)


def _folded(ctx, form: str) -> tuple[object, dict]:
    """The folded ``ov.Model`` and its I/O contract (no ONNX model is lowered: the graph is built here)."""
    from nsr_deploy.exporters.common import base_manifest
    from nsr_deploy.exporters.onnx.graph import DEFAULT_PATCH_BATCH, dynamic_axes
    from nsr_deploy.exporters.openvino.folded import build_folded

    batch = ctx.options.patch_batch or DEFAULT_PATCH_BATCH
    contract = base_manifest(ctx.loaded, form, batch, dynamic_axes(form))
    return build_folded(ctx.loaded, batch), {k: contract[k] for k in CONTRACT_KEYS if k in contract}


def _build_int8_sparse(ctx, path: Path, contract: dict, batch: int) -> tuple[GateResult, dict]:
    """int8 of a sparse model with the per-patch convs int8 (:mod:`.quantize.sparse_int8`): calibrated,
    task-gated (0.1 dB) and checked to execute int8 before anything is written to ``path``."""
    from nsr_deploy.exporters.openvino.quantize.sparse_int8 import build_int8_sparse_ir

    with ctx.stages.stage("openvino-int8"):
        built = build_int8_sparse_ir(ctx.loaded, path.parent, ctx.options.calib, ctx.options.gate_images, batch,
                                     ctx.options.threads, save=lambda m, p: save(m, p, "int8", contract),
                                     scratch=ctx.scratch)
    return built.gate, {"int8": built.report}


def _runner(ctx, path: Path):
    from nsr_deploy.runtimes.openvino.runner import OvRunner

    # No model cache at export: the blobs would be keyed to a model that may never be kept.
    return OvRunner(str(path), ctx.options.threads, cache=False)


@dataclass(frozen=True)
class NncfRecord:
    """What one NNCF attempt quantised, and how the compiled model runs it."""

    keep: set  # op names kept float
    weight_int8: list  # ops whose weights NNCF stored int8
    stray: list  # quantizers NNCF placed outside the targeted convs
    executed_int8: set  # op names the plugin runs u8 / i8
    runtime_precisions: dict
    compile_seconds: float


def _build_int8(ctx, model, ops, path: Path, contract: dict) -> tuple[GateResult, dict]:
    """Calibrate, quantize, gate; on failure once more with the last layers float (:mod:`.quantize.search`).
    The file left in ``path`` is the attempt that passed (a failure raises, and the pipeline discards the
    folder)."""
    from nsr_deploy.checks.task import task_of
    from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q
    from nsr_deploy.exporters.openvino.quantize.search import image_facing_layers, keep_float_search

    cfg = ctx.loaded.config
    task = task_of(ctx.loaded)
    with ctx.stages.stage("openvino-compress"):
        batches, calibration = _calibration(ctx, task, static_batch_of(model) or q.CALIB_BATCH)
    last_layers = image_facing_layers(cfg, head=False)
    with ctx.stages.stage("openvino-parity"):
        references, source = _gate_references(ctx, task)
        gate_on = (references, task, source)
        attempts = keep_float_search(
            lambda kept: _int8_attempt(ctx, model, ops, path, contract, batches, kept, gate_on), ((), last_layers))
    final = attempts[-1]
    if not final.passed:
        check = final.gate.checks[0]
        raise NSRError(f"int8 gate failed: task PSNR drop {check.figures['drop_db']:.3f} dB > {check.tolerance:g} "
                       f"dB even with {' and '.join(last_layers)} kept float ({task.describe()}); nothing written "
                       f"(try --precision fp16)")
    record = final.record
    report = q.layer_report(cfg, ops, record.keep, record.weight_int8, record.executed_int8)
    report["other_quantized_ops"] = record.stray
    history = [{"kept_float": list(a.kept_float) or None, **a.figures, "passed": a.passed} for a in attempts]
    entry = {"compile_seconds": record.compile_seconds, "runtime_precisions": record.runtime_precisions,
             "runtime_precisions_note": RUNTIME_PRECISION_NOTE,
             "int8": {**report, "calibration": calibration, "attempts": history, "gate_images": source}}
    return final.gate, entry


def _calibration(ctx, task, batch: int) -> tuple[list[dict], dict]:
    """NNCF inputs from ``--calib`` (default: the bundled samples), and what the manifest says of them."""
    from nsr_deploy.checks.task import read_images
    from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q

    cfg = ctx.loaded.config
    folder = Path(ctx.options.calib) if ctx.options.calib else sample_folder()
    images = read_images(folder, cfg.channels, q.CALIB_MAX_IMAGES)
    count = math.ceil(q.CALIB_TILES / batch) * batch  # whole calls for a fixed-batch engine
    tiles = q.calibration_tiles(images, task, cfg.patch_size, count)
    info = {"images": str(folder) if ctx.options.calib else "the bundled sample photos", "image_count": len(images),
            "tiles": count, "tile": cfg.patch_size, "batch": batch, "seed": q.CALIB_SEED,
            "degraded_as": task.as_dict(), "tool": "nncf",
            "preset": "mixed (symmetric int8 weights, asymmetric int8 activations)"}
    return q.calibration_batches(tiles, batch), info


def _gate_references(ctx, task) -> tuple[list, str]:
    """The int8 gate's images, degraded and restored by the fp32 reference once for all attempts: an
    ``ExportOptions.gate_images`` folder when the pipeline offers one, else the bundled samples."""
    from nsr_deploy.checks.gates import task_references
    from nsr_deploy.checks.task import read_images

    folder = getattr(ctx.options, "gate_images", None)
    images = read_images(folder or sample_folder(), ctx.loaded.config.channels)
    return task_references(ctx.loaded.net, images, task), str(folder) if folder else "the bundled sample photos"


def _int8_attempt(ctx, model, ops, path: Path, contract: dict, batches, keep_last: tuple, gate_on):
    """Quantize with ``keep_last`` layers float, save to ``path``, gate: an ``Int8Attempt``."""
    from nsr_deploy.exporters.openvino.op_roles import weight_quantized_ops
    from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q
    from nsr_deploy.exporters.openvino.quantize.search import Int8Attempt

    references, task, source = gate_on
    keep = q.float_scope(ops, keep_last)
    targets = [op.name for op in ops if op.role == "conv" and op.name not in keep]
    if not targets:
        raise NSRError("int8: this model has no conv with constant weights left to quantize")
    quantized = q.quantize(model, batches, targets)
    weight_int8 = weight_quantized_ops(quantized)
    stray = q.stray_quantizers(quantized, targets)
    save(quantized, path, "int8", contract)
    with _runner(ctx, path) as runner:
        gate = q.int8_gate(ctx.loaded.config, runner, references, task, source)
        used = check_execution(runner, ops, "int8")
        executed_int8 = {name for rt in runner.runtime_ops() if rt["precision"] in ("u8", "i8")
                         for name in rt["original"]}
        seconds = round(runner.load_seconds, 3)
    record = NncfRecord(keep, weight_int8, stray, executed_int8, used, seconds)
    return Int8Attempt(tuple(keep_last), gate, gate.passed, record)


def _target_entry(path: Path, precision: str, contract: dict, static: int | None) -> dict:
    return {
        "file": MODEL_FILE,
        "weights": path.with_suffix(".bin").name,
        "sha256": sha256_bytes(path.read_bytes()),
        "weights_sha256": sha256_bytes(path.with_suffix(".bin").read_bytes()),
        "precision": precision,
        "runtime": "openvino",
        "device": "CPU",
        "conv_form": contract.get("conv_form"),
        "static_batch": static,
        "weights_stored": WEIGHTS_STORED[precision],
        "execution_precision": EXECUTION.get(precision, "f32 (INFERENCE_PRECISION_HINT pinned by the runner)"),
        "batch": (f"static {static} (conv form {contract.get('conv_form')!r}: re-export to change it)" if static else
                  "dynamic; fix it at load time with OvRunner(tile_batch=N), no re-export"),
        **({"needs": BF16_NEEDS} if precision == "bf16" else {}),
        "size": "dynamic; fix it at load time with OvRunner(shape=(h, w))",
    }
