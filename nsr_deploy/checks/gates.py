"""Gates that run an engine: the float gate every target applies (random patches and a real image),
the bench's fuller float checks (the tiles of a real image too, every image), and the task-PSNR
gate of int8. The verdicts themselves are :mod:`.verdicts`'."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from nsr_deploy.checks import verdicts
from nsr_deploy.checks.compare import image_parity, patch_parity, tile_parity
from nsr_deploy.checks.results import Check, GateResult

GATE_PATCHES = 4  # random patches through a dynamic-batch engine


def float_gate(net, runner, max_abs: float, sample: tuple[np.ndarray, str] | None = None) -> GateResult:
    """Random patches (the engine's fixed batch, if it has one) and one real image (default: the first
    bundled sample) through ``runner`` against the PyTorch reference, within ``max_abs``."""
    from nsr_deploy.checks.samples import default_sample
    from nsr_deploy.runtimes.engine import Engine

    cfg = net.config
    checks = [patch_parity(net, runner, runner.static_batch or GATE_PATCHES, cfg.patch_size, max_abs)]
    image, name = sample if sample else default_sample(cfg.channels)
    checks.append(image_parity(net, Engine(runner, cfg), image, max_abs, name))
    return GateResult(tuple(checks), {"tolerance_max_abs": max_abs})


def precision_gate(net, runner, precision: str, sample: tuple[np.ndarray, str] | None = None) -> GateResult:
    """:func:`float_gate` at the precision's tolerance; fp16 is also held to the PSNR floor against the fp32
    reference on the real image (the verdict of the OpenVINO IR and of the fp16 ONNX model)."""
    gate = float_gate(net, runner, verdicts.tolerance_of(precision), sample)
    return verdicts.judge_fp16_gate(gate, verdicts.FP16_MIN_PSNR, on=("real_image",)) if precision == "fp16" else gate


def float_parity(net, runner, precision: str, images: list[tuple[str, np.ndarray]], patches: int = 16
                 ) -> list[Check]:
    """Every float check of one engine: random patches, the tiles of the first image, every whole image.

    ``images`` are ``(name, float32 CHW in [0, 1])``. fp32 must stay within 1e-4 everywhere; fp16 within
    5e-3, and its whole images at least 45 dB PSNR from the reference.
    """
    from nsr_deploy.runtimes.engine import Engine

    tol = verdicts.tolerance_of(precision)
    size = net.config.patch_size
    runner.activate()  # a fixed-batch engine says its batch once loaded
    results = [patch_parity(net, runner, runner.static_batch or patches, size, tol)]
    if images:
        results.append(tile_parity(net, runner, images[0][1], tol, images[0][0]))
    engine = Engine(runner, net.config)
    for name, chw in images:
        result = image_parity(net, engine, chw, tol, name)
        results.append(verdicts.judge_fp16(result) if precision == "fp16" else result)
    return results


# -- int8: judged on the task ------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskReference:
    """One gate image: degraded input, ground truth, and the fp32 reference's output and PSNR."""

    name: str
    x: np.ndarray
    ground_truth: np.ndarray
    fp32: np.ndarray
    fp32_psnr: float


def task_references(net, images: list[tuple[str, np.ndarray]], task, seed: int = 0) -> list[TaskReference]:
    """Degrade each clean uint8 image as the task says (fixed seed) and restore it with the PyTorch
    reference (whole-image semantics). Computed once, shared by every engine judged on them."""
    import torch

    from nsr_deploy.checks.task import degrade, task_psnr
    from nsr_deploy.models.reference import reference_forward

    rng = np.random.default_rng(seed)
    out = []
    for name, clean in images:
        x, gt = degrade(clean, task, rng)
        fp32 = reference_forward(net, torch.from_numpy(x[None]))[0].numpy()
        out.append(TaskReference(name, x, gt, fp32, task_psnr(fp32, gt, task)))
    return out


def task_scores(engine, references: list[TaskReference], task, precision: str) -> tuple[list, list, float]:
    """The engine (with host tiling) on the references' degraded images: per-image rows, its task PSNRs
    against ground truth, and its worst max abs difference to the fp32 reference's outputs."""
    from nsr_deploy.checks.task import task_psnr

    rows, psnrs, worst = [], [], 0.0
    for ref in references:
        got = engine.restore_chw(ref.x)
        worst = max(worst, float(np.max(np.abs(got - ref.fp32))))
        psnrs.append(task_psnr(got, ref.ground_truth, task))
        rows.append({"image": ref.name, "fp32_psnr": round(ref.fp32_psnr, 3),
                     f"{precision}_psnr": round(psnrs[-1], 3)})
    return rows, psnrs, worst


def task_drop_gate(engine, references: list[TaskReference], task, source: str | None = None,
                   tolerance: float | None = None) -> GateResult:
    """The engine (with host tiling) on the references' degraded images, scored against ground truth
    on the task and judged by :func:`~.verdicts.judge_task_drop`."""
    tolerance = verdicts.INT8_MAX_TASK_DROP_DB if tolerance is None else tolerance
    rows, psnrs, worst = task_scores(engine, references, task, "int8")
    check = verdicts.judge_task_drop([r.fp32_psnr for r in references], psnrs, worst, task.describe(), source,
                                     tolerance)
    check = replace(check, figures={**check.figures, "images": rows, "max_abs_vs": "fp32 reference output"})
    return GateResult((check,), {"tolerance_drop_db": tolerance, "task": task.as_dict()})


def task_drop_parity(net, engine, images: list[tuple[str, np.ndarray]], task,
                     tolerance: float | None = None, seed: int = 0) -> tuple[Check, dict]:
    """int8's criterion as the bench applies it, independently of the exporter's gate: each clean uint8
    image degraded (fixed seed), restored by the engine and by the fp32 reference, both scored against
    ground truth. Returns the check and its figures (PSNRs, drop)."""
    gate = task_drop_gate(engine, task_references(net, images, task, seed), task, None, tolerance)
    return gate.checks[0], dict(gate.checks[0].figures)
