"""Image-quality metrics as the paper reports them: PSNR (on Y for colour, borders shaved) and SSIM.

Inputs are numpy arrays on the 0-255 scale (uint8 or float), HxW or HxWxC.
"""

from __future__ import annotations

import numpy as np


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma on the 16-235 scale, as MATLAB's rgb2ycbcr (the SR literature's Y)."""
    x = img.astype(np.float64)
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def _prepare(img: np.ndarray, y_only: bool, shave: int) -> np.ndarray:
    x = img.astype(np.float64)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if y_only and x.ndim == 3 and x.shape[2] >= 3:
        x = rgb_to_y(x)
    if shave:
        x = x[shave:-shave, shave:-shave]
    return x


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0, y_only: bool = True, peak: float = 255.0) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    x, y = _prepare(a, y_only, shave), _prepare(b, y_only, shave)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    g /= g.sum()
    # 'valid' separable filtering, as the reference SSIM implementation (Wang et al. 2004)
    win = np.lib.stride_tricks.sliding_window_view
    x = win(x, g.size, axis=0) @ g
    return win(x, g.size, axis=1) @ g


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0, y_only: bool = True, peak: float = 255.0) -> float:
    """Wang et al., IEEE TIP 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03."""
    x, y = _prepare(a, y_only, shave), _prepare(b, y_only, shave)
    if x.ndim == 3:
        return float(np.mean([ssim(x[..., c], y[..., c], 0, False, peak) for c in range(x.shape[2])]))
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = _gaussian_filter(x), _gaussian_filter(y)
    sxx = _gaussian_filter(x * x) - mx * mx
    syy = _gaussian_filter(y * y) - my * my
    sxy = _gaussian_filter(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))
