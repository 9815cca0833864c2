"""ExecuTorch target: the deploy network exported with ``torch.export`` and lowered with the XNNPACK
partitioner (``to_edge_transform_and_lower``) into ``model.pte``, for phones and boards (XNNPACK on ARM and
x86; the same file format takes Core ML, QNN and Vulkan delegates, which this target does not build).

    nsr-deploy export ckpt.pt --target executorch [--precision fp32|fp16] [--allow-fallback]

``fp32``  Gate: max abs <= 1e-4 against the PyTorch reference on random patches and a real image.
``fp16``  the whole network in half (XNNPACK's fp16 kernels); the runner feeds and reads fp16. Gate: fp16's
          judge (max abs <= 5e-3 and PSNR >= 45 dB against the fp32 reference on the real image).

Conv form: ``scaled-mix`` (``capabilities.EXECUTORCH_FORM``) unless ``--conv-form`` names a deploy form.
XNNPACK delegates every op of ``scaled-mix``; of ``grouped`` it leaves the runtime-weight conv to
ExecuTorch's portable kernels, of ``matmul`` the slices and reshapes of its im2col. The share of ops
delegated is measured on the lowered graph and recorded; a sparse layer with an op outside XNNPACK
fails the export unless ``allow_fallback`` (``--allow-fallback``) is given.

Shapes: one patch per call (batch 1, static: XNNPACK's reshapes need it), height and width dynamic from
``MIN_SIDE`` up to ``--max-side`` (default ``MAX_SIDE``: the windows of both tilings, and whole images up to
512 pixels a side). Batch 1 because a fixed batch of 16 was no faster per patch (sr-x2, 48x48, one
thread: 396 vs 408 ms for 16 patches) and would compute 16 copies of a whole-image window.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import metadata
from pathlib import Path

from nsr_deploy.checks.gates import precision_gate
from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.capabilities import DEPLOY_FORMS, EXECUTORCH_FORM, PRECISIONS_OF_TARGET
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.common import sha256_bytes
from nsr_deploy.exporters.target import Artifact
from nsr_deploy.runtimes.executorch.runner import quiet

NAME = "executorch"
STAGES = ["executorch-lower", "executorch-parity"]
MODEL_FILE = "model.pte"
PRECISIONS = PRECISIONS_OF_TARGET["executorch"]
BATCH = 1
MIN_SIDE = 8
MAX_SIDE = 512  # XNNPACK sizes its workspace for the largest window: sr-x2 69 MiB at 256, 980 MiB at 1024
# the deploy modules whose ops are a sparse layer's (nn_module_stack names them on every node)
SPARSE_MODULES = ("ScaledMixConv", "DeploySparseConv")
def unavailable() -> str | None:
    from nsr_deploy.runtimes.executorch.runner import unavailable as runtime_unavailable

    why = runtime_unavailable()
    if why:
        return why
    try:
        with quiet():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as e:
        return f"ExecuTorch's XNNPACK partitioner cannot be imported ({e.name}); pip install 'nsr-deploy[executorch]'"
    return None



def runs_on(entry: dict, tools: dict) -> list:
    """Where the ``.pte`` runs: an ExecuTorch runtime with the delegate it was lowered for (XNNPACK)."""
    from nsr_deploy.exporters import runs_on as r

    side = (entry.get("size") or {}).get("max_side")
    what = f"{entry.get('io_dtype')} in and out, one patch per call, sides up to {side}"
    return [r.verified(f"ExecuTorch {tools.get('executorch')} (Python runtime, XNNPACK) on the CPU it was exported "
                       f"on; {what}", r.GATE),
            r.verified("ExecuTorch's Python runtime (XNNPACK) on x86-64 CPUs", r.CONFORMANCE),
            r.unverified("ExecuTorch on ARM64 (Android, iOS, Linux boards) and its Core ML / QNN / Vulkan delegates",
                         "ExecuTorch's Python runtime needs torch, not run under emulation here; the other "
                         "delegates are not built")]


def validate_options(options) -> None:
    """Refuse what this target cannot honour before any work (the pipeline calls it up front)."""
    if options.precision not in PRECISIONS:
        raise NSRError(f"executorch supports precisions {', '.join(PRECISIONS)}, not {options.precision!r}")
    if options.calib:
        raise NSRError(f"--calib is for int8; executorch {options.precision} needs no calibration")
    if options.max_side is not None and options.max_side < MIN_SIDE:
        raise NSRError(f"--max-side must be at least {MIN_SIDE}, got {options.max_side}")


def form_of(options) -> str:
    return options.conv_form if options.conv_form in DEPLOY_FORMS else EXECUTORCH_FORM


# -- lowering ----------------------------------------------------------------------------------
def lower(module, inputs: tuple, dynamic_shapes=None):
    """``module`` exported on ``inputs`` and lowered with the XNNPACK partitioner; the edge program manager."""
    import torch

    with quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        with torch.no_grad():
            program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=False)
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


def _is_op(node) -> bool:
    """An operator node (not a delegate call, tuple access or symbolic-size arithmetic)."""
    return node.op == "call_function" and "Edge" in type(node.target).__name__


def delegation(edge) -> dict:
    """Ops inside XNNPACK delegates vs ops left to ExecuTorch's portable kernels, on the lowered graph;
    ``sparse_fallback`` lists the not-delegated ops that belong to a sparse layer."""
    gm = edge.exported_program().graph_module
    inside, subgraphs = 0, 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            lowered = getattr(gm, node.target)
            inside += sum(1 for n in lowered.original_module.graph.nodes if n.op == "call_function")
    outside, sparse = {}, {}
    for node in gm.graph.nodes:
        if not _is_op(node):
            continue
        op = node.target.__name__
        outside[op] = outside.get(op, 0) + 1
        stack = [str(t) for _, t in (node.meta.get("nn_module_stack") or {}).values()]
        if any(name in t for t in stack for name in SPARSE_MODULES):
            sparse[op] = sparse.get(op, 0) + 1
    total = inside + sum(outside.values())
    return {"backend": "XnnpackBackend", "delegated_ops": inside, "ops": total,
            "delegated_fraction": round(inside / total, 4) if total else 1.0, "delegated_subgraphs": subgraphs,
            "not_delegated": dict(sorted(outside.items())), "sparse_fallback": dict(sorted(sparse.items()))}


def deploy_program(loaded, form: str, precision: str, max_side: int = MAX_SIDE):
    """The deploy network in ``form`` and ``precision``, lowered: (edge program manager, delegation)."""
    import torch
    from torch.export import Dim

    from nsr_deploy.models.deploy import DeployNet

    cfg = loaded.config
    dtype = torch.float16 if precision == "fp16" else torch.float32
    net = DeployNet(loaded.net, form, BATCH).eval().to(dtype)
    p = cfg.patch_size
    x = torch.rand(BATCH, cfg.channels, p, p, generator=torch.Generator().manual_seed(0)).to(dtype)
    h, w = Dim("h", min=MIN_SIDE, max=max_side), Dim("w", min=MIN_SIDE, max=max_side)
    shapes = {"x": {2: h, 3: w}, "valid": {2: h, 3: w}}
    edge = lower(net, (x, torch.ones(BATCH, 1, p, p, dtype=dtype)), shapes)
    return edge, delegation(edge)


def refuse_fallback(found: dict, form: str, allow: bool) -> None:
    if found["sparse_fallback"] and not allow:
        ops = ", ".join(f"{op} x{n}" for op, n in found["sparse_fallback"].items())
        raise NSRError(f"XNNPACK leaves ops of the sparse layers to portable kernels in conv form {form!r} ({ops}); "
                       f"use --conv-form auto ({EXECUTORCH_FORM}, fully delegated) or pass --allow-fallback")


# -- the pipeline step -----------------------------------------------------------------------
def build(ctx) -> Artifact:
    """Pipeline step: ``model.pte`` into ``ctx.folder``."""
    validate_options(ctx.options)
    precision, form = ctx.options.precision, form_of(ctx.options)
    max_side = ctx.options.max_side or MAX_SIDE
    with ctx.stages.stage("executorch-lower"):
        edge, found = deploy_program(ctx.loaded, form, precision, max_side)
        refuse_fallback(found, form, ctx.options.allow_fallback)
        with quiet():
            data = edge.to_executorch().buffer
        path = ctx.folder / MODEL_FILE
        path.write_bytes(data)
    tools = {"executorch": metadata.version("executorch")}
    entry = _target_entry(path, data, precision, form, found, max_side)
    return Artifact(NAME, path, f"ExecuTorch {precision}", f"executorch/{precision}", entry, tools)


def gate(artifact: Artifact, ctx) -> GateResult:
    """Pipeline step: the .pte in ExecuTorch's runtime on this CPU against the PyTorch reference."""
    from nsr_deploy.runtimes.executorch.runner import ExecuTorchRunner

    precision = ctx.options.precision
    with ctx.stages.stage("executorch-parity"), ExecuTorchRunner(str(artifact.path), ctx.options.threads) as runner:
        result = precision_gate(ctx.loaded.net, runner, precision)
    return replace(result, facts={"gate_device": "cpu (XNNPACK)"})


def _target_entry(path: Path, data: bytes, precision: str, form: str, found: dict, max_side: int) -> dict:
    return {
        "file": path.name,
        "sha256": sha256_bytes(data),
        "precision": precision,
        "runtime": "executorch",
        "method": "forward",
        "conv_form": form,
        "static_batch": BATCH,
        "batch": "one patch [1, C, h, w] per call (ExecuTorchRunner loops over a batch)",
        "size": {"dynamic": True, "min_side": MIN_SIDE, "max_side": max_side},
        "io_dtype": "float16" if precision == "fp16" else "float32",
        "delegation": found,
    }
