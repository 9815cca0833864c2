"""Engine outputs against the PyTorch reference.

Every comparison is against the reference layer and the reference's whole-image evaluation (never
against the deploy rewrite that produced the engine):
  * random patches through the patch network (the batch the engine was built for);
  * the tiles host tiling cuts from a real image, engine and reference on the *same* tiles;
  * a real image restored end to end with host tiling, against ``reference_forward``.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.checks.results import Check
from nsr_deploy.checks.verdicts import FP32_MAX_ABS


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


def _compared(name: str, got: np.ndarray, want: np.ndarray, tolerance: float, detail: str) -> Check:
    diff = float(np.max(np.abs(got - want)))
    return Check(name, diff, psnr_float(got, want), tolerance, diff <= tolerance, detail)


def patch_parity(net, runner, n: int, size: int, tolerance: float = FP32_MAX_ABS, seed: int = 0) -> Check:
    """Random patches: engine vs the reference network (each item one pooling patch)."""
    import torch

    x = random_patches(net.config.channels, n, size, seed)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = runner.infer(x, np.ones((n, 1, size, size), np.float32))
    return _compared("random_patches", got, want, tolerance, f"{n} patches of {size}x{size}")


def image_parity(net, engine, image_chw: np.ndarray, tolerance: float = FP32_MAX_ABS, name: str = "image") -> Check:
    """A real image, whole-image semantics: engine with host tiling vs ``reference_forward``."""
    import torch

    from nsr_deploy.models.reference import reference_forward

    want = reference_forward(net, torch.from_numpy(image_chw[None]))[0].numpy()
    got = engine.restore_chw(image_chw)
    h, w = image_chw.shape[1:]
    return _compared("real_image", got, want, tolerance,
                     f"{name} {w}x{h}, {engine.last_stats.get('windows', 1)} patches")


def tile_parity(net, runner, image_chw: np.ndarray, tolerance: float = FP32_MAX_ABS, name: str = "image",
                tiling: str = "reference", max_tiles: int = 16) -> Check:
    """The engine and the reference network on the *same tiles*: the windows (and ``valid`` masks) that
    host tiling cuts from a real image, up to ``max_tiles`` of them, each pooled as one patch."""
    import torch

    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.host.tiling import Padded

    plan = Engine(runner, net.config, tiling).plan(*image_chw.shape[1:])
    tiles = list(plan.tiles[:max_tiles])
    x, valid = Padded(image_chw, plan.pad).windows(plan, tiles)
    with torch.no_grad():
        want = net.finish(net.head_tail(torch.from_numpy(x) - net.config.image_mean, torch.from_numpy(valid))).numpy()
    got = runner.infer(x, valid)
    return _compared("real_tiles", got, want, tolerance,
                     f"{name}: {len(tiles)} {plan.window_h}x{plan.window_w} {tiling} tiles")
