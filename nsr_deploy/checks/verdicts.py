"""The documented tolerances and the verdict of each precision's gate: one judge per precision, used by
every export target and by the bench.

``fp32``  max abs difference from the PyTorch reference <= ``FP32_MAX_ABS`` (the check's own tolerance).
``fp16``  the max-abs check at the fp16 tolerance, and PSNR against the fp32 reference >= a floor
          (:func:`judge_fp16`).
``int8``  judged on the task: the mean task PSNR against ground truth may drop at most
          ``INT8_MAX_TASK_DROP_DB`` from the fp32 reference's (:func:`judge_task_drop`); the OpenVINO
          route that quantises the per-patch convs too is held to ``SPARSE_INT8_MAX_DROP_DB``.
``bf16``  max abs and PSNR against the fp32 reference, and a task PSNR drop (:mod:`.bf16`).

TensorRT's GPU engines have their own fp32 / fp16 figures (``TRT_*``): GPU convolutions sum in another
order than the CPU reference, so fp32 agrees to 1e-3, not 1e-4.

Targets read the constants at call time (``verdicts.FP32_MAX_ABS``), so a test can tighten them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from nsr_deploy.checks.results import Check, GateResult

# Documented tolerances (max abs difference on [0, 1] outputs, or PSNR figures in dB).
FP32_MAX_ABS = 1e-4
FP16_MAX_ABS = 5e-3
FP16_MIN_PSNR = 45.0
INT8_MAX_TASK_DROP_DB = 0.3
SPARSE_INT8_MAX_DROP_DB = 0.1  # every conv int8 (per-patch ones too): held tighter than NNCF's route
BF16_MAX_ABS = 0.05
BF16_MIN_PSNR = 40.0  # dB against the fp32 reference's output
BF16_MAX_TASK_DROP_DB = 0.1  # tighter than int8's: bf16 keeps f32's range and rounds only the mantissa
TRT_FP32_MAX_ABS = 1e-3
TRT_FP16_MIN_PSNR = 40.0
TRT_FP16_MAX_ABS_GUARD = 0.1  # fp16 engines are judged on PSNR; the max abs only catches a broken engine


def tolerance_of(precision: str) -> float:
    """The documented max-abs tolerance of a floating-point precision."""
    if precision == "fp32":
        return FP32_MAX_ABS
    if precision == "fp16":
        return FP16_MAX_ABS
    raise ValueError(f"no max-abs tolerance for {precision!r} (int8 is judged on the task: INT8_MAX_TASK_DROP_DB)")


def judge_fp16(check: Check, min_psnr: float = FP16_MIN_PSNR) -> Check:
    """fp16's second condition: PSNR against the fp32 reference at least ``min_psnr`` (inf, identical
    outputs, passes), on top of the check's own max-abs guard."""
    enough = bool(check.psnr >= min_psnr)
    return replace(check, passed=check.passed and enough, min_psnr=min_psnr,
                   detail=check.detail + f"; PSNR vs fp32 reference {check.psnr_rounded} dB (>= {min_psnr:g})")


def judge_fp16_gate(gate: GateResult, min_psnr: float = FP16_MIN_PSNR, on: tuple[str, ...] | None = None
                    ) -> GateResult:
    """:func:`judge_fp16` on the gate's checks named in ``on`` (every check when None)."""
    checks = tuple(judge_fp16(c, min_psnr) if on is None or c.check in on else c for c in gate.checks)
    return GateResult(checks, {**gate.limits, "min_psnr": min_psnr})


def judge_task_drop(reference_psnrs: list[float], engine_psnrs: list[float], worst_abs: float, description: str,
                    source: str | None = None, tolerance: float | None = None) -> Check:
    """int8: the engine's mean task PSNR at most ``tolerance`` dB below the fp32 reference's, on the
    same degraded images. ``worst_abs``: the largest difference from the reference's output."""
    tolerance = INT8_MAX_TASK_DROP_DB if tolerance is None else tolerance
    p32, p8 = float(np.mean(reference_psnrs)), float(np.mean(engine_psnrs))
    drop = p32 - p8
    where = f" from {source}" if source else ""
    detail = (f"{description}; {len(engine_psnrs)} images{where}: fp32 {p32:.2f} dB, int8 {p8:.2f} dB, "
              f"drop {drop:.3f} dB (<= {tolerance:g})")
    figures = {"drop_db": round(drop, 3), "fp32_psnr": round(p32, 3), "int8_psnr": round(p8, 3)}
    return Check("task_psnr_drop", worst_abs, p8, tolerance, drop <= tolerance, detail, figures=figures)
