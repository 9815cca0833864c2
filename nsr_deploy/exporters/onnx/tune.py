"""``--conv-form tune`` for ONNX Runtime: build every export form, check its parity, time it on this
machine and keep the fastest; the timings go into the manifest. Machine-specific by nature, so it is an
explicit opt-in (``auto`` is a rule: :mod:`~nsr_deploy.exporters.form_rule`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsr_deploy.core.capabilities import EXPORT_FORMS, STATIC_BATCH_FORMS
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.onnx.graph import build_onnx


def candidate_forms() -> list[str]:
    """Forms timed by ``tune``: the export forms (portable: only those ship)."""
    return list(EXPORT_FORMS)


def time_runner(runner, channels: int, batch: int, size: int, repeats: int = 3) -> float:
    """Median milliseconds of one call on ``batch`` patches of ``size``x``size`` (after a warm-up)."""
    from nsr_deploy.checks.compare import random_patches
    from nsr_deploy.core.timing import measure

    x = random_patches(channels, batch, size, seed=7)
    valid = np.ones((batch, 1, size, size), np.float32)
    return measure(lambda: runner.infer(x, valid), repeats, warmup=1).median


def choose_form(loaded, batch: int, opset: int, threads: int | None, scratch: Path) -> tuple[str, dict]:
    """Build, parity-check and time every candidate in ONNX Runtime; the fastest that passes wins."""
    from nsr_deploy.checks import verdicts
    from nsr_deploy.checks.compare import patch_parity
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    cfg = loaded.config
    report: dict[str, dict] = {}
    for form in candidate_forms():
        try:
            model = build_onnx(loaded, form, batch if form in STATIC_BATCH_FORMS else None, opset)
        except NSRError as e:
            report[form] = {"status": "unavailable", "why": str(e)}
            continue
        path = scratch / f"candidate-{form}.onnx"
        path.write_bytes(model.SerializeToString())
        with OrtRunner(str(path), threads, specialise=False) as runner:
            check = patch_parity(loaded.net, runner, batch, cfg.patch_size, verdicts.FP32_MAX_ABS)
            if not check.passed:
                report[form] = {"status": "failed parity", "max_abs": check.to_manifest()["max_abs"]}
                continue
            report[form] = {"status": "ok", "ms": round(time_runner(runner, cfg.channels, batch, cfg.patch_size), 2)}
        path.unlink()
    timed = {f: r["ms"] for f, r in report.items() if r["status"] == "ok"}
    if not timed:
        raise NSRError("no conv form passed the parity gate in ONNX Runtime")
    return min(timed, key=timed.get), {"workload": f"{batch} patches of {cfg.patch_size}x{cfg.patch_size}",
                                       "threads": threads, "candidates": report, "machine_specific": True,
                                       "note": "timed on the exporting machine; another machine may rank the "
                                               "forms differently"}
