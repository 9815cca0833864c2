"""Image files in and out (Pillow), shaped for a model: uint8, grey HxW or colour HxWx3.

Whatever the file holds is converted to what the model takes, with a warning when information
changes (16-bit depth, grey <-> colour). An alpha channel is kept aside and upscaled bicubic.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nsr_deploy.errors import NSRError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class LoadedImage:
    pixels: np.ndarray  # uint8, HxW (grey model) or HxWx3 (colour model)
    alpha: np.ndarray | None = None  # uint8 HxW, if the file had one
    source_mode: str = ""
    warnings: list[str] = field(default_factory=list)


def _to_8bit(img: Image.Image, warnings: list[str]) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        warnings.append(f"{img.mode} ({'16' if hi > 255 else '32'}-bit) input converted to 8-bit")
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 1.0 if arr.max() <= 1.0 else 255.0
        warnings.append("floating-point input converted to 8-bit")
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGB;16", "RGBA;16", "BGR;16"):
        warnings.append(f"{img.mode} input converted to 8-bit")
        return img.convert("RGB")
    return img


def read_image(path: str | Path, channels: int) -> LoadedImage:
    """Read any Pillow-readable image and shape it for a ``channels``-channel model."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.seek(0)
            img = ImageOps.exif_transpose(opened)
            img.load()
    except FileNotFoundError:
        raise NSRError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise NSRError(f"{path}: not a readable image ({why})") from None
    warnings: list[str] = []
    mode = img.mode
    img = _to_8bit(img, warnings)
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA" if img.mode != "LA" else "LA")
        alpha = np.asarray(img.getchannel("A")).copy()
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    grey_file = img.mode in ("L", "1")
    if channels == 3:
        if grey_file:
            warnings.append("grey image given to a colour model: converted to RGB")
        img = img.convert("RGB")
    elif channels == 1:
        if not grey_file:
            warnings.append("colour image given to a grey model: converted to grey (ITU-R 601 luma)")
        img = img.convert("L")
    else:
        raise NSRError(f"models with {channels} channels are not supported by image I/O")
    return LoadedImage(np.asarray(img).copy(), alpha, mode, warnings)


def upscale_alpha(alpha: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if alpha.shape == size_hw:
        return alpha
    return np.asarray(Image.fromarray(alpha).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def write_image(path: str | Path, pixels: np.ndarray, alpha: np.ndarray | None = None) -> list[str]:
    """Write atomically (temp file, then rename); returns warnings. Format from the suffix."""
    path = Path(path)
    warnings = []
    img = Image.fromarray(pixels)
    suffix = path.suffix.lower()
    if alpha is not None:
        if suffix in (".jpg", ".jpeg", ".bmp", ".ppm", ".pgm"):
            warnings.append(f"{suffix} cannot hold alpha: alpha channel dropped")
        else:
            img.putalpha(Image.fromarray(upscale_alpha(alpha, pixels.shape[:2])))
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise NSRError(f"{path}: unknown image format {suffix!r}")
    params = {"quality": 95} if fmt == "JPEG" else {}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp, format=fmt, **params)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return warnings
