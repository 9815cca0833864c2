"""The bf16 gate: an engine computed in bfloat16 (8-bit mantissa) against the fp32 PyTorch reference.

bf16 cannot meet the fp32 max-abs tolerance, so it is judged three ways, every one of which must pass:

* random patches and a real image (whole-image semantics, host tiling): max abs <= ``verdicts.BF16_MAX_ABS``
  and PSNR against the fp32 reference's output >= ``verdicts.BF16_MIN_PSNR``;
* the task: the bundled photos degraded as the model's task says, restored by the engine and by the fp32
  reference, both scored against ground truth; the mean task PSNR may drop at most
  ``verdicts.BF16_MAX_TASK_DROP_DB`` (tighter than int8's: bf16 keeps f32's range and rounds only the
  mantissa).

The tolerances live in :mod:`.verdicts` and are read at call time, so a test can tighten them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from nsr_deploy.checks import verdicts
from nsr_deploy.checks.results import Check, GateResult


def task_drop_check(engine, references, task, source: str | None = None) -> Check:
    """Mean task PSNR of ``engine`` on the references' degraded images vs the fp32 reference's (Check)."""
    from nsr_deploy.checks.gates import task_scores

    rows, got_psnr, worst = task_scores(engine, references, task, "bf16")
    p32, p16 = float(np.mean([r.fp32_psnr for r in references])), float(np.mean(got_psnr))
    drop, limit = p32 - p16, verdicts.BF16_MAX_TASK_DROP_DB
    where = f" from {source}" if source else ""
    detail = (f"{task.describe()}; {len(references)} images{where}: fp32 {p32:.2f} dB, bf16 {p16:.2f} dB, "
              f"drop {drop:.3f} dB (<= {limit:g})")
    figures = {"drop_db": round(drop, 3), "fp32_psnr": round(p32, 3), "bf16_psnr": round(p16, 3), "images": rows,
               "max_abs_vs": "fp32 reference output"}
    return Check("task_psnr_drop", worst, p16, limit, drop <= limit, detail, figures=figures)


def bf16_gate(net, runner, references, task, source: str | None = None,
              sample: tuple[np.ndarray, str] | None = None) -> GateResult:
    """Random patches and a real image within ``verdicts.BF16_MAX_ABS`` and ``BF16_MIN_PSNR`` of the fp32 reference,
    and the task PSNR drop on ``references`` (:func:`~nsr_deploy.checks.gates.task_references`)."""
    from nsr_deploy.checks.gates import float_gate
    from nsr_deploy.runtimes.engine import Engine

    floor, limit = verdicts.BF16_MIN_PSNR, verdicts.BF16_MAX_ABS
    gate = float_gate(net, runner, limit, sample)
    checks = [replace(c, passed=c.passed and bool(c.psnr >= floor), min_psnr=floor,
                      detail=f"{c.detail}; PSNR vs fp32 reference {c.psnr_rounded} dB (>= {floor:g})")
              for c in gate.checks]
    checks.append(task_drop_check(Engine(runner, net.config), references, task, source))
    return GateResult(tuple(checks), {"tolerance_max_abs": limit, "min_psnr": floor,
                                      "tolerance_drop_db": verdicts.BF16_MAX_TASK_DROP_DB, "task": task.as_dict()})
