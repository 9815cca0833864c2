"""Host-side tiling in numpy: cut an image into the engine's patches and blend the results back.

``reference``: exactly the reference trainer's evaluation (see :mod:`.geometry`): images with a
side below ``4 * patch`` are one patch; larger ones are cut into overlapping reflect-padded patches,
whose centres are blended with the trainer's weights. The ``valid`` mask that goes with each
patch marks real image pixels, so the skip conv sees zeros beyond the image as in the reference.

Images here are float32 ``[C, H, W]``; patches ``[N, C, P, P]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from nsr_deploy.runtimes.geometry import REFERENCE_PAD, Window, reference_windows, uses_whole_image


@dataclass(frozen=True)
class Plan:
    """Which patches to run for one image, and how to put their outputs back together."""

    height: int
    width: int
    patch: int
    windows: tuple[Window, ...]  # empty: the whole image is one patch
    pad: int = REFERENCE_PAD

    @property
    def whole_image(self) -> bool:
        return not self.windows

    @property
    def pixels_computed(self) -> int:
        if self.whole_image:
            return self.height * self.width
        return len(self.windows) * self.patch * self.patch


def reference_plan(height: int, width: int, patch: int, pooled: bool = True) -> Plan:
    """The reference's plan. ``pooled=False`` (dense models): always the whole image."""
    if not pooled or uses_whole_image(height, width, patch):
        return Plan(height, width, patch, ())
    return Plan(height, width, patch, tuple(reference_windows(height, width, patch)))


def extract(img: np.ndarray, plan: Plan, windows: list[Window] | tuple[Window, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Patches and their ``valid`` masks for some of a plan's windows."""
    pad, p = plan.pad, plan.patch
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    xs = np.empty((len(windows), img.shape[0], p, p), np.float32)
    valid = np.zeros((len(windows), 1, p, p), np.float32)
    for i, w in enumerate(windows):
        xs[i] = padded[:, w.y + pad:w.y + pad + p, w.x + pad:w.x + pad + p]
        y0, x0 = max(0, -w.y), max(0, -w.x)
        y1, x1 = min(p, plan.height - w.y), min(p, plan.width - w.x)
        valid[i, :, y0:y1, x0:x1] = 1.0
    return xs, valid


class Blender:
    """Accumulates patch outputs (at output resolution) into the weighted average."""

    def __init__(self, plan: Plan, channels: int, scale: int):
        self.plan, self.scale = plan, scale
        self.sum = np.zeros((channels, plan.height * scale, plan.width * scale), np.float32)
        self.weight = np.zeros((1, plan.height * scale, plan.width * scale), np.float32)

    def add(self, outputs: np.ndarray, windows) -> None:
        s, r = self.scale, self.plan.pad * self.scale
        core = (self.plan.patch - 2 * self.plan.pad) * s
        for out, w in zip(outputs, windows):
            oy, ox = (w.y + self.plan.pad) * s, (w.x + self.plan.pad) * s
            self.sum[:, oy:oy + core, ox:ox + core] += np.float32(w.weight) * out[:, r:r + core, r:r + core]
            self.weight[:, oy:oy + core, ox:ox + core] += np.float32(w.weight)

    def result(self) -> np.ndarray:
        return self.sum / self.weight


def batches(windows, size: int) -> Iterator[list[Window]]:
    windows = list(windows)
    for i in range(0, len(windows), size):
        yield windows[i:i + size]
