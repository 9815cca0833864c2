"""What nsr-deploy can build and run, in one table: conv forms, backends, targets, precisions.

Torch-free and import-free on purpose: the CLI, the runtimes (which never import torch), the
exporters and the bench all read their vocabulary from here, so a new form or backend is added once.

Conv forms (how the per-patch convolution is written in the graph, see :mod:`nsr_deploy.models.deploy`):

``grouped``    patches folded into channels; ``Conv.group`` is an attribute, so the patch batch is fixed
``matmul``     im2col and one batched MatMul per patch; dynamic batch and size
``dense-mix``  static convs for all k groups, then the gamma-weighted sum; dynamic batch and size
``scaled-mix`` ExecuTorch only: ``dense-mix``'s sum written with the ops XNNPACK delegates at dynamic sizes
               (:mod:`nsr_deploy.models.deploy_xnnpack`); fixed batch, dynamic size
``folded``     OpenVINO only: built from OpenVINO opsets, the patch batch folded into channels from head to
               tail (:mod:`nsr_deploy.exporters.openvino.folded`); fixed batch. ``model.onnx`` stays portable
               (``grouped``) beside it; ``auto`` gives a sparse model's OpenVINO IR this form.
``nchwc``      ONNX Runtime's internal blocked layout; fixed batch, ONNX Runtime on x86 only. Not an export
               form: the ONNX Runtime runner builds it at load from the portable model
               (:mod:`nsr_deploy.runtimes.onnxruntime.specialise`); the bench also builds it from torch
               (:mod:`nsr_deploy.exporters.onnx.nchwc`) and times the load-time one as ``nchwc-at-load``.

``auto`` picks a form by a rule (:mod:`nsr_deploy.exporters.form_rule`, data below), the same on every
machine; ``tune`` times the export forms on this machine (opt-in, machine-specific).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- conv forms --------------------------------------------------------------------------------------
DEPLOY_FORMS = ("grouped", "matmul", "dense-mix")  # traced from the deploy rewrite: every runtime reads them
ORT_ONLY_FORMS = ("nchwc",)
OPENVINO_ONLY_FORMS = ("folded",)  # OpenVINO graphs built from its opsets; model.onnx is then PORTABLE_FORM
ONNX_FORMS = (*DEPLOY_FORMS, *ORT_ONLY_FORMS)
# ExecuTorch's form when the export's is not a deploy form (auto, tune, nchwc): the only one XNNPACK delegates
# whole (grouped leaves its runtime-weight conv, matmul its slices and symbolic reshapes to portable kernels)
EXECUTORCH_FORM = "scaled-mix"
EXECUTORCH_ONLY_FORMS = (EXECUTORCH_FORM,)
EXPORT_FORMS = DEPLOY_FORMS  # what model.onnx may hold: portable forms only
AUTO_FORM = "auto"  # by rule: AUTO_SPARSE_FORM / AUTO_DENSE_FORM (TensorRT ranks its own by documented support)
TUNE_FORM = "tune"  # time the export forms in ONNX Runtime on this machine, keep the fastest
FORM_CHOICES = (*EXPORT_FORMS, *OPENVINO_ONLY_FORMS, AUTO_FORM, TUNE_FORM)
# the rule: a sparse model gets the form every runtime runs fastest on CPUs and that ONNX Runtime's runner
# specialises to NCHWc at load; a dense model has no per-patch conv (every form is one graph): dynamic batch
AUTO_SPARSE_FORM = "grouped"
AUTO_DENSE_FORM = "matmul"
# OpenVINO's own rule under auto: a sparse model's IR is built folded (no layout Reorders around the per-patch
# convs, bias/ReLU/residual on one tensor); a dense model's IR is lowered from model.onnx as before
OPENVINO_AUTO_SPARSE_FORM = "folded"
# forms whose mixing MatMul carries the stacked kernels ONNX Runtime's runner reads back to specialise at load
SPECIALISABLE_FORMS = ("grouped", "matmul")
AT_LOAD_FORM = "nchwc-at-load"  # bench only: the portable grouped file as the ONNX Runtime runner specialises it
ORT_BENCH_FORMS = (*ONNX_FORMS, AT_LOAD_FORM)  # what the bench times in ONNX Runtime
BENCH_FORMS = (*ORT_BENCH_FORMS, *OPENVINO_ONLY_FORMS, *EXECUTORCH_ONLY_FORMS)
STATIC_BATCH_FORMS = ("grouped", "nchwc", *OPENVINO_ONLY_FORMS, EXECUTORCH_FORM)  # batch fixed in the graph
PORTABLE_FORM = "grouped"  # the ONNX twin other runtimes get when model.onnx is ORT-only
# dense-mix evaluates all k groups (k times the FLOPs by construction), so it cannot show the saving
# the bench is about; it is timed only when asked for (--conv-forms).
BENCH_DEFAULT_FORMS = ("grouped", "matmul", "nchwc", *OPENVINO_ONLY_FORMS, EXECUTORCH_FORM)
# TensorRT's own choice among equally supported forms (FLOPs decide first): tie-break only
TENSORRT_FORM_ORDER = ("matmul", "dense-mix", "grouped")
TIMING_TWIN_FORM = "matmul"  # a dense twin has no sparse conv: every form traces to the same plain convs
# ncnn's form when the export's is not a deploy form (auto, nchwc): at one patch per call, ``grouped``
# is a plain Convolution with runtime weights in ncnn, 2.8x faster than matmul and 2.4x than dense-mix
# per 48x48 patch of sr-x2 (x86, 1 thread; README, ncnn section)
NCNN_FORM = "grouped"


# -- backends (runtimes) and the targets (exported files) they run ------------------------------------
@dataclass(frozen=True)
class Backend:
    name: str
    runner_module: str
    runner_class: str
    target: str | None  # the export target whose file it runs; None: runs checkpoints (the reference)
    suffix: str | None  # engine file suffix it runs
    forms: tuple[str, ...]  # conv forms it runs
    device: str  # cpu | gpu
    layer_graphs: bool  # the bench's single-layer protocol runs on it
    dense_twin: bool  # the bench times the dense twin on it


BACKEND_TABLE = (
    Backend("torch", "nsr_deploy.runtimes.torch.runner", "TorchRunner", None, None, (), "cpu", True, True),
    Backend("onnxruntime", "nsr_deploy.runtimes.onnxruntime.runner", "OrtRunner", "onnx", ".onnx",
            ORT_BENCH_FORMS, "cpu", True, True),
    Backend("openvino", "nsr_deploy.runtimes.openvino.runner", "OvRunner", "openvino", ".xml",
            (*DEPLOY_FORMS, *OPENVINO_ONLY_FORMS), "cpu", True, True),
    Backend("tensorrt", "nsr_deploy.runtimes.tensorrt.runner", "TrtRunner", "tensorrt", ".engine", DEPLOY_FORMS, "gpu",
            False, False),
    Backend("ncnn", "nsr_deploy.runtimes.ncnn.runner", "NcnnRunner", "ncnn", ".param", DEPLOY_FORMS, "cpu",
            False, True),
    # the bench times the fully delegated form only (export takes a deploy form with --allow-fallback)
    Backend("executorch", "nsr_deploy.runtimes.executorch.runner", "ExecuTorchRunner", "executorch", ".pte",
            EXECUTORCH_ONLY_FORMS, "cpu", True, True),
)
BACKENDS = {b.name: b for b in BACKEND_TABLE}
BACKEND_NAMES = tuple(BACKENDS)  # the bench's and the CLI's order
REFERENCE_BACKEND = "torch"
AUTO_BACKEND = "auto"
AUTO_ORDER = ("tensorrt", "openvino", "onnxruntime", "ncnn", "executorch")  # what `load(folder)` tries first
EXPORTED_BACKENDS = tuple(b.name for b in BACKEND_TABLE if b.target)
GPU_BACKENDS = tuple(b.name for b in BACKEND_TABLE if b.device == "gpu")
TARGET_OF_BACKEND = {b.name: b.target for b in BACKEND_TABLE if b.target}
BACKEND_OF_TARGET = {t: b for b, t in TARGET_OF_BACKEND.items()}
BACKEND_OF_SUFFIX = {b.suffix: b.name for b in BACKEND_TABLE if b.suffix}
LAYER_BACKENDS = tuple(b.name for b in BACKEND_TABLE if b.layer_graphs)
TWIN_BACKENDS = tuple(b.name for b in BACKEND_TABLE if b.dense_twin)

# -- export targets -------------------------------------------------------------------------------------
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PRECISIONS_OF_TARGET = {"onnx": ("fp32", "fp16"), "openvino": PRECISIONS, "tensorrt": ("fp32", "fp16"),
                        "ncnn": ("fp32", "fp16"), "executorch": ("fp32", "fp16")}
# bf16 is an execution precision (f32 weights, the CPU plugin computes in bf16): only CPUs with AVX-512 BF16 or
# AMX run it natively, so it is refused elsewhere; the probe lives in nsr_deploy.runtimes.openvino.cpu_bf16
BF16_NEEDS = "a CPU with AVX-512 BF16 or AMX (cpuinfo flag avx512_bf16 or amx_bf16; OpenVINO capability BF16)"
# the precisions the bench times each engine at, against the dense twin at the same precision
BENCH_PRECISIONS = ("fp32", "bf16", "int8")
ENGINE_TARGETS = tuple(PRECISIONS_OF_TARGET)  # build an engine file; onnx first: the others lower from it
SERVER_TARGETS = ("onnx", "openvino", "tensorrt")  # engines a server (Triton) runs; ncnn, executorch: devices
# Targets that lay out the engines built before them (a folder layout, not an engine): never part of
# ``all``; they build every server engine target this machine can build, skipping (with why) the others.
PACKAGING_TARGETS = {"triton": SERVER_TARGETS}
ALL_TARGETS = (*ENGINE_TARGETS, *PACKAGING_TARGETS)
TARGET_CHOICES = (*ALL_TARGETS, "all")


def forms_of(backend: str) -> tuple[str, ...]:
    """The conv forms ``backend`` runs (none for an unknown backend or the reference)."""
    return BACKENDS[backend].forms if backend in BACKENDS else ()


def is_static_batch(form: str) -> bool:
    return form in STATIC_BATCH_FORMS
