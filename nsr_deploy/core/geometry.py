"""Where the reference trainer's evaluation tiling puts its patches (numpy-free, torch-free).

The reference (``ychfan/pt_ir``, ``wdsr_nsr``) evaluates an image whose sides are both at least
``4 * patch`` by cutting overlapping patches from the image reflect-padded by ``pad`` pixels:
patch ``patch``, stride ``patch - 2 * pad - 8``. Five sets of windows: a main grid centred on the
padded image (the remainder split between both ends), and four border strips that reach the edges
(top row and right column anchored at the top, bottom row and left column anchored at the bottom
and right as the remainder dictates). Each patch contributes its centre (the ``pad`` ring dropped);
overlaps are averaged with weight 1 for the main grid and 0.3 for the strips.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_PAD = 4
STRIP_WEIGHT = 0.3


@dataclass(frozen=True)
class Window:
    """One patch: its top-left corner in image coordinates (negative = in the reflect padding)."""

    y: int
    x: int
    weight: float


def reference_stride(patch: int, pad: int = REFERENCE_PAD) -> int:
    return patch - 2 * pad - 8


def uses_whole_image(h: int, w: int, patch: int) -> bool:
    """The reference pools over the whole image when either side is below four patches."""
    return h < 4 * patch or w < 4 * patch


def reference_windows(h: int, w: int, patch: int, pad: int = REFERENCE_PAD) -> list[Window]:
    """The reference's patches for an ``h x w`` image, in the reference's order."""
    stride = reference_stride(patch, pad)
    if stride < 1:
        raise ValueError(f"patch size {patch} is too small for the reference tiling")
    hp, wp = h + 2 * pad, w + 2 * pad
    if hp < patch or wp < patch:
        raise ValueError(f"image {h}x{w} is smaller than one patch of {patch}")
    nh = (hp - patch) // stride + 1
    nw = (wp - patch) // stride + 1
    crop_h = hp - ((nh - 1) * stride + patch)
    crop_w = wp - ((nw - 1) * stride + patch)
    padded = []  # (y, x, weight) in padded coordinates
    padded += [(crop_h // 2 + i * stride, crop_w // 2 + j * stride, 1.0)
               for i in range(nh) for j in range(nw)]
    padded += [(0, j * stride, STRIP_WEIGHT) for j in range(nw)]  # top row
    padded += [(i * stride, wp - patch, STRIP_WEIGHT) for i in range(nh)]  # right column
    padded += [(hp - patch, crop_w + j * stride, STRIP_WEIGHT) for j in range(nw)]  # bottom row
    padded += [(crop_h + i * stride, 0, STRIP_WEIGHT) for i in range(nh)]  # left column
    return [Window(y - pad, x - pad, wt) for y, x, wt in padded]
