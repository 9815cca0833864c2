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
