"""Numerical parity of an exported engine against the PyTorch reference.

Two checks, both against the reference layer and the reference's whole-image evaluation (never
against the deploy rewrite that produced the engine):
  * random patches through the patch network (the batch the engine was built for);
  * a real image restored end to end with host tiling, against ``reference_forward``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Documented tolerances (max abs difference on [0, 1] outputs, or PSNR figures in dB).
FP32_MAX_ABS = 1e-4
FP16_MAX_ABS = 5e-3
FP16_MIN_PSNR = 45.0
INT8_MAX_TASK_DROP_DB = 0.3


@dataclass
class ParityResult:
    check: str
    max_abs: float
    psnr: float
    tolerance: float
    passed: bool
    detail: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["max_abs"] = float(f"{self.max_abs:.3g}")
        d["psnr"] = round(self.psnr, 2) if np.isfinite(self.psnr) else None
        return d


def psnr_float(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two [0, 1] float arrays (no rounding, no shave)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def random_patches(channels: int, n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random images with edges and texture, in [0, 1] (plain noise pools to ~0.5 everywhere,
    which would leave the sparsity MLP untested)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, channels, size, size), np.float32)
    for i in range(n):
        for c in range(channels):
            a, b, ph = rng.uniform(1, 8, 3)
            base = rng.uniform(0.1, 0.9) + 0.3 * np.sin(a * xx * 6.28 + b * yy * 3.14 + ph)
            step = (xx > rng.uniform(0.2, 0.8)).astype(np.float32) * rng.uniform(-0.4, 0.4)
            out[i, c] = base + step + rng.normal(0, 0.05, (size, size))
    return np.clip(out, 0.0, 1.0)


def patch_parity(net, runner, n: int, size: int, tolerance: float = FP32_MAX_ABS, seed: int = 0) -> ParityResult:
    """Random patches: engine vs the reference network (each item one pooling patch)."""
    import torch

    x = random_patches(net.config.channels, n, size, seed)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = runner.infer(x, np.ones((n, 1, size, size), np.float32))
    diff = float(np.max(np.abs(got - want)))
    return ParityResult("random_patches", diff, psnr_float(got, want), tolerance, diff <= tolerance,
                        f"{n} patches of {size}x{size}")


def image_parity(net, engine, image_chw: np.ndarray, tolerance: float = FP32_MAX_ABS,
                 name: str = "image") -> ParityResult:
    """A real image, whole-image semantics: engine with host tiling vs ``reference_forward``."""
    import torch

    from nsr_deploy.models.reference import reference_forward

    want = reference_forward(net, torch.from_numpy(image_chw[None]))[0].numpy()
    got = engine.restore_chw(image_chw)
    diff = float(np.max(np.abs(got - want)))
    h, w = image_chw.shape[1:]
    return ParityResult("real_image", diff, psnr_float(got, want), tolerance, diff <= tolerance,
                        f"{name} {w}x{h}, {engine.last_stats.get('windows', 1)} patches")


def tile_parity(net, runner, image_chw: np.ndarray, tolerance: float = FP32_MAX_ABS, name: str = "image",
                tiling: str = "reference", max_tiles: int = 16) -> ParityResult:
    """The engine and the reference network on the *same tiles*: the windows (and ``valid`` masks) that
    host tiling cuts from a real image, up to ``max_tiles`` of them, each pooled as one patch."""
    import torch

    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.tiling import Padded

    plan = Engine(runner, net.config, tiling).plan(*image_chw.shape[1:])
    tiles = list(plan.tiles[:max_tiles])
    x, valid = Padded(image_chw, plan.pad).windows(plan, tiles)
    with torch.no_grad():
        want = net.finish(net.head_tail(torch.from_numpy(x) - net.config.image_mean, torch.from_numpy(valid))).numpy()
    got = runner.infer(x, valid)
    diff = float(np.max(np.abs(got - want)))
    return ParityResult("real_tiles", diff, psnr_float(got, want), tolerance, diff <= tolerance,
                        f"{name}: {len(tiles)} {plan.window_h}x{plan.window_w} {tiling} tiles")


def tolerance_of(precision: str) -> float:
    """The documented max-abs tolerance of a floating-point precision."""
    if precision == "fp32":
        return FP32_MAX_ABS
    if precision == "fp16":
        return FP16_MAX_ABS
    raise ValueError(f"no max-abs tolerance for {precision!r} (int8 is judged on the task: INT8_MAX_TASK_DROP_DB)")


def with_min_psnr(result: ParityResult, min_psnr: float = FP16_MIN_PSNR) -> ParityResult:
    """fp16's second condition on real images: PSNR against the fp32 reference at least ``min_psnr``."""
    enough = result.psnr >= min_psnr  # inf (identical) passes
    return ParityResult(result.check, result.max_abs, result.psnr, result.tolerance, result.passed and enough,
                        result.detail + f"; PSNR >= {min_psnr:g} dB required")


def float_parity(net, runner, precision: str, images: list[tuple[str, np.ndarray]], patches: int = 16
                 ) -> list[ParityResult]:
    """Every float check of one engine: random patches, the tiles of the first image, every whole image.

    ``images`` are ``(name, float32 CHW in [0, 1])``. fp32 must stay within 1e-4 everywhere; fp16 within
    5e-3, and its whole images at least 45 dB PSNR from the reference.
    """
    from nsr_deploy.runtimes.engine import Engine

    tol = tolerance_of(precision)
    size = net.config.patch_size
    runner.activate()  # a fixed-batch engine says its batch once loaded
    results = [patch_parity(net, runner, runner.static_batch or patches, size, tol)]
    if images:
        results.append(tile_parity(net, runner, images[0][1], tol, images[0][0]))
    engine = Engine(runner, net.config)
    for name, chw in images:
        result = image_parity(net, engine, chw, tol, name)
        results.append(with_min_psnr(result) if precision == "fp16" else result)
    return results


def task_drop_parity(net, engine, images: list[tuple[str, np.ndarray]], task,
                     tolerance: float = INT8_MAX_TASK_DROP_DB, seed: int = 0) -> tuple[ParityResult, dict]:
    """int8's criterion, judged on the task: each clean uint8 image is degraded as ``task`` says (fixed
    seed), restored by the engine and by the fp32 reference (``reference_forward``), and both are
    scored against ground truth (:func:`~nsr_deploy.exporters.task_quality.task_psnr`). Passes when the
    engine's mean PSNR is at most ``tolerance`` dB below the reference's. Computed here, independently
    of the exporter's own gate. Returns the result and its figures (PSNRs, drop)."""
    import torch

    from nsr_deploy.exporters.task_quality import degrade, task_psnr
    from nsr_deploy.models.reference import reference_forward

    rng = np.random.default_rng(seed)
    reference, ours, worst = [], [], 0.0
    for _, clean in images:
        x, truth = degrade(clean, task, rng)
        want = reference_forward(net, torch.from_numpy(x[None]))[0].numpy()
        got = engine.restore_chw(x)
        worst = max(worst, float(np.max(np.abs(got - want))))
        reference.append(task_psnr(want, truth, task))
        ours.append(task_psnr(got, truth, task))
    p_ref, p_ours = float(np.mean(reference)), float(np.mean(ours))
    drop = p_ref - p_ours
    detail = (f"{task.describe()}; {len(images)} images: reference {p_ref:.2f} dB, engine {p_ours:.2f} dB, "
              f"drop {drop:.3f} dB (<= {tolerance:g})")
    figures = {"drop_db": round(drop, 3), "reference_psnr": round(p_ref, 3), "engine_psnr": round(p_ours, 3)}
    return ParityResult("task_psnr_drop", worst, p_ours, tolerance, drop <= tolerance, detail), figures
