"""Degradations that make a restoration task from a clean image (numpy + Pillow, no torch).

The trainer (``tools/train_default.py``) and the bench use these same functions, so the bundled
models are measured on exactly the degradation they were trained for.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop so both sides are multiples of ``scale`` (the usual SR test protocol)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _resize(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    squeeze = img.ndim == 3 and img.shape[2] == 1
    pil = Image.fromarray(img[..., 0] if squeeze else img)
    out = np.asarray(pil.resize(size_wh, Image.BICUBIC))
    return out[..., None] if squeeze else out


def bicubic_down(img: np.ndarray, scale: int) -> np.ndarray:
    """uint8 image -> bicubic (antialiased, Pillow) downscale by ``scale``; sides must divide."""
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"{h}x{w} is not a multiple of {scale}: modcrop first")
    return _resize(img, (w // scale, h // scale))


def bicubic_up(img: np.ndarray, scale: int) -> np.ndarray:
    """uint8 image -> bicubic upscale by ``scale`` (the classic SR baseline)."""
    h, w = img.shape[:2]
    return _resize(img, (w * scale, h * scale))


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, sigma on the 0-255 scale; float32 in [0,1] units, unclipped
    (the DnCNN protocol the paper follows)."""
    x = img.astype(np.float32) / 255.0
    return x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma / 255.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """uint8 image -> decoded JPEG at ``quality`` (Pillow's encoder, 4:2:0 for colour)."""
    squeeze = img.ndim == 3 and img.shape[2] == 1
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if squeeze else img).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    return out[..., None] if squeeze else out


def to_grey(img: np.ndarray) -> np.ndarray:
    """Pillow's ITU-R 601-2 luma conversion (what 'L' mode means)."""
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[..., 0]
    return np.asarray(Image.fromarray(img[..., :3]).convert("L"))
