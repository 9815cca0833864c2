"""int8 for the OpenVINO target: NNCF post-training quantization, calibrated on real images, judged
by the task.

What can be quantized: only convolutions with constant weights. The sparse conv's kernel is mixed for
every patch at run time (Eq. 10), so there is no weight tensor to quantize ahead of time: NNCF leaves
it alone, and we list it as float instead of hiding it. The routing path (pool -> MLP -> softmax) and
the kernel mixing also stay float: a small logit error re-weights the kernel of a whole patch, and
the mixing's output *is* the per-patch conv's weights. What remains for int8 in a sparse model are the
head, tail and skip convs (plus, in the ``dense-mix`` form, the static all-groups convs); a dense
model quantizes every conv. NNCF is told to quantize exactly those convs (weights and inputs) and
nothing else, so the manifest's list is the whole truth; any quantizer found elsewhere is reported.

Calibration: tiles of the model's patch size, drawn with a fixed seed from the calibration images
after degrading them as the task does (the network sees degraded inputs, so their statistics are the
ones to calibrate on). The gate: PSNR against ground truth on the task, int8 against the fp32
PyTorch reference; if it drops by more than ``INT8_MAX_TASK_DROP_DB`` we retry once with the last
layers (tail and skip conv) float, a known fix for SR nets whose int8 output loses intensity.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from nsr_deploy.checks.gates import TaskReference, task_drop_gate
from nsr_deploy.checks.results import GateResult
from nsr_deploy.checks.task import Task, degrade
from nsr_deploy.exporters.openvino.op_roles import GraphOp

CALIB_TILES = 128
CALIB_BATCH = 16  # tiles per calibration call for dynamic-batch forms
CALIB_MAX_IMAGES = 32
CALIB_SEED = 0
FLOAT_BY_DESIGN = ("per_patch_conv", "pooling_mlp", "kernel_mixing", "softmax")
WHY_FLOAT = {
    "per_patch_conv": "per-call weights: the kernel is mixed from the k groups for every patch at run time "
                      "(Eq. 10), so there is no weight tensor to quantize ahead of time; its input stays float too",
    "pooling_mlp": "sparsity routing (patch pool -> MLP -> softmax): a small logit error re-weights the kernel "
                   "of a whole patch, and the MLP costs next to nothing",
    "kernel_mixing": "kernel mixing (Eq. 10): its output is the per-patch conv's weights; kept fp32 by design",
    "softmax": "softmax over the k groups: kept fp32 by design",
    "last_layers": "kept float on the second attempt: the int8 gate failed with the last layers (tail / skip) "
                   "quantized",
}


# -- calibration data ------------------------------------------------------------------------
def calibration_tiles(images: list[tuple[str, np.ndarray]], task: Task, patch: int, count: int = CALIB_TILES,
                      seed: int = CALIB_SEED) -> np.ndarray:
    """``count`` degraded tiles ``[count, C, patch, patch]``, drawn round-robin over the images at
    seeded random positions (the same images give the same tiles)."""
    rng = np.random.default_rng(seed)
    inputs = [_at_least(degrade(clean, task, rng)[0], patch) for _, clean in images]
    tiles = []
    for i in range(count):
        x = inputs[i % len(inputs)]
        y0 = int(rng.integers(x.shape[1] - patch + 1))
        x0 = int(rng.integers(x.shape[2] - patch + 1))
        tiles.append(x[:, y0:y0 + patch, x0:x0 + patch])
    return np.ascontiguousarray(np.stack(tiles))


def _at_least(x: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad a ``CxHxW`` image that is smaller than one tile (tiny images, high SR scales)."""
    ph, pw = max(0, size - x.shape[1]), max(0, size - x.shape[2])
    if not (ph or pw):
        return x
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="symmetric")


def calibration_batches(tiles: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    """Model inputs for NNCF. A fixed-batch engine needs exactly ``batch`` tiles per call: a short last
    group is dropped (the tile count is rounded up to a multiple of the batch before drawing)."""
    out = []
    for i in range(0, len(tiles) - batch + 1, batch):
        x = tiles[i:i + batch]
        out.append({"x": x, "valid": np.ones((x.shape[0], 1, *x.shape[2:]), np.float32)})
    return out


# -- quantization ----------------------------------------------------------------------------
def float_scope(ops: list[GraphOp], last_layers: tuple[str, ...] = ()) -> dict[str, str]:
    """OpenVINO op name -> why it stays float: the roles above, plus convs of ``last_layers``."""
    keep = {}
    for op in ops:
        if op.role in FLOAT_BY_DESIGN:
            keep[op.name] = op.role
        elif op.layer in last_layers:
            keep[op.name] = "last_layers"
    return keep


def quantize(model, batches: list[dict], targets: list[str]):
    """NNCF post-training quantization of a copy of ``model``, limited to the ``targets`` ops.

    NNCF's CPU defaults also quantize the inputs of residual adds, the patch pooling (ReduceMean),
    the pixel shuffle and more; measured on the bundled sr-x2, those alone cost 0.34 dB with every
    conv float. So the ignored scope is everything *but* the targets: int8 lands exactly where the
    manifest says. Mixed preset: symmetric int8 weights, asymmetric activations (activations are
    signed around the image mean).
    """
    from nsr_deploy.exporters.openvino.quantize.nncf_import import require_nncf

    require_nncf()  # the telemetry switch is set before NNCF's first import
    import nncf

    wanted = set(targets)
    ignored = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_friendly_name() not in wanted]
    with _quiet():
        return nncf.quantize(model.clone(), nncf.Dataset(batches), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))


def stray_quantizers(quantized, targets: list[str]) -> list[str]:
    """Ops fed by a quantizer that are not among ``targets`` (should be none; reported if not)."""
    wanted, stray = set(targets), set()
    for node in quantized.get_ordered_ops():
        if node.get_type_name() != "FakeQuantize":
            continue
        for consumer in (t.get_node() for t in node.output(0).get_target_inputs()):
            if consumer.get_friendly_name() not in wanted:
                stray.add(consumer.get_friendly_name())
    return sorted(stray)


@contextlib.contextmanager
def _quiet():
    """NNCF logs and draws progress bars; an export's stdout may be ``--json``, so keep both quiet."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def _layer_role(cfg, name: str, sparse: bool) -> str:
    if name == "body.0":
        return "head conv"
    if name == f"body.{cfg.num_blocks + 1}":
        return "tail conv"
    if name.startswith("skip"):
        return "skip conv"
    return "sparse conv" if sparse else "block conv"


def layer_report(cfg, ops: list[GraphOp], keep_float: dict[str, str], quantized_ops: set[str],
                 int8_ops: set[str]) -> dict:
    """Which checkpoint layers run int8 and which stay float, and why (the manifest's ``int8`` entry).

    ``quantized_ops``: ops whose weights the IR stores as int8; ``int8_ops``: ops the CPU plugin
    reports executing in u8/i8. A conv counts as quantized only when both agree.
    """
    roles = {name: _layer_role(cfg, name, sparse) for name, _, _, _, sparse in cfg.conv_shapes()}
    quantized, floating = [], []
    for layer, role in roles.items():
        layer_ops = [op for op in ops if op.layer == layer and op.role in ("conv", "per_patch_conv")]
        done = bool(layer_ops) and all(op.name in quantized_ops and op.name in int8_ops for op in layer_ops)
        entry = {"layer": layer, "role": role, "ops": [op.op_type for op in layer_ops]}
        if done:
            quantized.append(entry)
            continue
        reasons = sorted({keep_float[op.name] for op in layer_ops if op.name in keep_float})
        entry["why"] = "; ".join(WHY_FLOAT[r] for r in reasons) if reasons else \
            "NNCF left it float (no quantizable pattern)"
        floating.append(entry)
    routing = [op for op in ops if op.role in ("pooling_mlp", "kernel_mixing", "softmax")]
    if routing:
        floating.append({"layer": "sparsity routing and mixing (every sparse conv)", "role": "routing",
                         "ops": sorted({op.op_type for op in routing}),
                         "why": WHY_FLOAT["pooling_mlp"] + "; " + WHY_FLOAT["kernel_mixing"]})
    report = {"quantized": quantized, "float": floating}
    if any(op.role == "per_patch_conv" for op in ops):
        report["note"] = ("the sparse convs carry most of this model's FLOPs and stay float in this conv form; "
                          "the 'dense-mix' form has static weights for all k groups, which int8 can quantize "
                          "(at k times the conv FLOPs)")
    return report


# -- the gate --------------------------------------------------------------------------------
def int8_gate(config, runner, references: list[TaskReference], task: Task, source: str) -> GateResult:
    """Task PSNR against ground truth, the int8 engine against the fp32 reference, on the same
    degraded images (:func:`~nsr_deploy.checks.gates.task_drop_gate`)."""
    from nsr_deploy.runtimes.engine import Engine

    return task_drop_gate(Engine(runner, config), references, task, source)
