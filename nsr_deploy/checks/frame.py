"""The border metric: PSNR on the outer frame of an image and on the rest, separately.

A restoration model can be good inside and wrong at the image border (a dark or tinted fringe)
while its whole-image PSNR hardly moves: the frame is a few percent of the pixels. So the bundled
models are judged on both parts, each as a margin over the classic baseline (bicubic upscaling or
the degraded input): a model that handles borders well gains about as much in the frame as inside.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.checks.metrics import rgb_to_y

FRAME = 4  # pixels of the output image


def frame_and_interior_psnr(restored: np.ndarray, ground_truth: np.ndarray, frame: int = FRAME,
                            peak: float = 255.0) -> tuple[float, float]:
    """(PSNR on the outer ``frame`` pixels, PSNR inside them) of 0-255 images; colour on Y (BT.601)."""
    a, b = restored.astype(np.float64), ground_truth.astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    if a.ndim == 3 and a.shape[2] >= 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    elif a.ndim == 3:
        a, b = a[..., 0], b[..., 0]
    inside = np.zeros(a.shape, bool)
    inside[frame:-frame, frame:-frame] = True
    err = (a - b) ** 2

    def db(mse: float) -> float:
        return float("inf") if mse == 0 else float(10.0 * np.log10(peak * peak / mse))

    return db(err[~inside].mean()), db(err[inside].mean())


def border_gap(restored: np.ndarray, baseline: np.ndarray, ground_truth: np.ndarray,
               frame: int = FRAME) -> tuple[float, float]:
    """(frame margin, interior margin) in dB: how much the model beats the baseline in each part."""
    mf, mi = frame_and_interior_psnr(restored, ground_truth, frame)
    bf, bi = frame_and_interior_psnr(baseline, ground_truth, frame)
    return mf - bf, mi - bi
