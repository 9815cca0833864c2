"""The restoration task a model solves, and how well it solves it against ground truth.

The int8 gate needs this: quantization is judged by what it costs on the task (PSNR against the
clean image), not by how far it moves the output. A model's task comes from its bundled metadata
(``task`` = sr | noise | jpeg, with ``sigma`` / ``quality``). A checkpoint carries none, so we take
what its shape suggests: bicubic super-resolution when scale > 1, Gaussian denoising at sigma 25 (the
paper's middle noise level, and the bundled denoiser's) when scale is 1. Degradations are the
functions in :mod:`nsr_deploy.core.degrade`, the ones the bundled models were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsr_deploy.checks.metrics import psnr
from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.host.images import IMAGE_SUFFIXES

ASSUMED_SIGMA = 25.0
DEFAULT_JPEG_QUALITY = 10
TASKS = ("sr", "noise", "jpeg")


@dataclass(frozen=True)
class Task:
    kind: str  # sr | noise | jpeg
    scale: int = 1
    sigma: float | None = None
    quality: int | None = None
    assumed: bool = False  # True when the model carried no task and we inferred one

    def describe(self) -> str:
        if self.kind == "sr":
            what = f"bicubic x{self.scale} super-resolution"
        elif self.kind == "noise":
            what = f"Gaussian denoising, sigma {self.sigma:g}"
        else:
            what = f"JPEG deblocking, quality {self.quality}"
        return what + (" (assumed: the model carries no task)" if self.assumed else "")

    def as_dict(self) -> dict:
        return {"task": self.kind, "scale": self.scale, "sigma": self.sigma, "quality": self.quality,
                "assumed": self.assumed, "description": self.describe()}


def task_of(loaded) -> Task:
    """The model's task from its metadata, else the assumption the module docstring states."""
    cfg, meta = loaded.config, loaded.meta or {}
    kind = meta.get("task")
    if kind in TASKS:
        if kind == "sr" and cfg.scale == 1:
            raise NSRError("the model's metadata says super-resolution but its scale is 1")
        if kind != "sr" and cfg.scale > 1:
            raise NSRError(f"the model's metadata says {kind!r} but it upscales x{cfg.scale}")
        sigma = float(meta.get("sigma") or ASSUMED_SIGMA) if kind == "noise" else None
        quality = int(meta.get("quality") or DEFAULT_JPEG_QUALITY) if kind == "jpeg" else None
        return Task(kind, cfg.scale, sigma, quality)
    if cfg.scale > 1:
        return Task("sr", cfg.scale, assumed=True)
    return Task("noise", 1, sigma=ASSUMED_SIGMA, assumed=True)


def image_paths(folder: str | Path) -> list[Path]:
    """The image files in ``folder``, sorted by name; a one-line error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NSRError(f"{folder}: not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise NSRError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def read_images(folder: str | Path, channels: int, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 image)`` for the images in ``folder`` sorted by name: ``HxWx3`` for colour models,
    ``HxW`` for grey ones (ITU-R 601 luma). At most ``limit`` images.

    Each is read as ``restore`` reads its inputs (:func:`~nsr_deploy.runtimes.host.images.read_image`: a regular
    file, its header's size checked against the pixel budget before decoding), and since a folder is
    held in memory all at once, its images together get the same budget.
    """
    from nsr_deploy.core.budgets import PIXELS_ENV, max_pixels
    from nsr_deploy.runtimes.host.images import read_image

    budget, total, out = max_pixels(), 0, []
    for path in image_paths(folder)[:limit]:
        pixels = read_image(path, channels).pixels
        total += pixels.shape[0] * pixels.shape[1]
        if total > budget:
            raise NSRError(f"{folder}: its images hold more than {budget / 1e6:g} Mpx together (the pixel budget; "
                           f"reached at {path.name}); use fewer or smaller images, or raise it with --max-pixels "
                           f"or {PIXELS_ENV}")
        out.append((path.name, pixels))
    return out


def to_chw(img: np.ndarray) -> np.ndarray:
    """``HxW`` / ``HxWxC`` (any dtype) -> float32 ``CxHxW``, scaled to [0, 1] when uint8."""
    x = img.astype(np.float32) / np.float32(255.0) if img.dtype == np.uint8 else img.astype(np.float32)
    return np.ascontiguousarray(x[None] if x.ndim == 2 else x.transpose(2, 0, 1))


def degrade(clean: np.ndarray, task: Task, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(model input float32 ``CxHxW``, ground truth uint8 image) for one clean uint8 image."""
    from nsr_deploy.core.degrade import add_noise, bicubic_down, jpeg, modcrop

    if task.kind == "sr":
        gt = modcrop(clean, task.scale)
        return to_chw(bicubic_down(gt, task.scale)), gt
    if task.kind == "jpeg":
        return to_chw(jpeg(clean, task.quality)), clean
    return to_chw(add_noise(clean, task.sigma, rng)), clean  # float, unclipped: the DnCNN protocol


def task_psnr(restored_chw: np.ndarray, ground_truth: np.ndarray, task: Task) -> float:
    """PSNR as the paper reports it: on the quantised output; SR on luma with ``scale`` pixels shaved."""
    y = np.clip(np.rint(restored_chw * 255.0), 0, 255).astype(np.uint8)
    out = y[0] if ground_truth.ndim == 2 else y.transpose(1, 2, 0)
    sr = task.kind == "sr"
    return psnr(out, ground_truth, shave=task.scale if sr else 0, y_only=sr)
