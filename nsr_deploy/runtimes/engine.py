"""An exported engine plus its manifest: restores whole images of any size.

``Engine.restore`` takes uint8 ``HxW``/``HxWxC`` arrays (returns uint8) or float32 in [0, 1]
(returns float32, unclipped), tiles them on the host as the chosen tiling mode says, runs the
runner on bounded batches of patches and blends the result.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.budgets import check_pixels
from nsr_deploy.config import NSRConfig
from nsr_deploy.errors import NSRError
from nsr_deploy.runtimes.base import Runner
from nsr_deploy.runtimes.contract import check_engine_output
from nsr_deploy.runtimes.tiling import CELL_BORDERS, Assembler, Padded, batches, make_plan

TILINGS = ("reference", "cells")
DEFAULT_TILE_BATCH = 16


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding, in place (large images: no float temporaries)."""
    np.multiply(x, 255.0, out=x)
    np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


class Engine:
    def __init__(self, runner: Runner, config: NSRConfig, tiling: str = "reference",
                 tile_batch: int | None = None, manifest: dict | None = None, border: str = "clamp"):
        if tiling not in TILINGS:
            raise NSRError(f"unknown tiling {tiling!r} (choose from {', '.join(TILINGS)})")
        if border not in CELL_BORDERS:
            raise NSRError(f"unknown border {border!r} (choose from {', '.join(CELL_BORDERS)})")
        self.border = border  # cells only: the reference tiling always reflects (it must stay exact)
        self.runner = runner
        self.config = config
        self.tiling = tiling
        self.tile_batch = tile_batch
        self.manifest = manifest or {}
        self.last_stats: dict = {}

    # -- lifecycle ------------------------------------------------------------------------
    def activate(self) -> Engine:
        self.runner.activate()
        return self

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Engine:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restoration ----------------------------------------------------------------------
    def restore(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image)
        if img.ndim == 2:
            chw = img[None]
        elif img.ndim == 3:
            chw = img.transpose(2, 0, 1)
        else:
            raise NSRError(f"expected an HxW or HxWxC image, got shape {img.shape}")
        if chw.shape[0] != self.config.channels:
            raise NSRError(f"the model takes {self.config.channels} channel(s), the image has {chw.shape[0]}")
        if img.dtype == np.uint8:
            x = chw.astype(np.float32) / np.float32(255.0)
        elif np.issubdtype(img.dtype, np.floating):
            x = chw.astype(np.float32)
        else:
            raise NSRError(f"unsupported image dtype {img.dtype} (uint8 or float)")
        y = self.restore_chw(x)
        out = y[0] if img.ndim == 2 else y.transpose(1, 2, 0)
        if img.dtype == np.uint8:
            return to_uint8(out)
        return np.ascontiguousarray(out)

    def restore_batch(self, images) -> list[np.ndarray]:
        return [self.restore(im) for im in images]

    def plan(self, height: int, width: int):
        cfg = self.config
        if not self.runner.active:
            self.runner.activate()  # a fixed batch is known once the engine is loaded; cells fill it
        return make_plan(self.tiling, height, width, cfg.patch_size, cfg.sparse, cfg.receptive_radius(),
                         self.runner.static_batch, self.border)

    def restore_chw(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[C, H, W]`` -> float32 ``[C, H*s, W*s]``."""
        cfg = self.config
        h, w = x.shape[1:]
        check_pixels(w, h, "image")
        plan = self.plan(h, w)
        size = self.tile_batch or self.runner.static_batch or DEFAULT_TILE_BATCH
        # what the engine really computes: a fixed-batch engine pads short calls unless it has a smaller twin
        items = sum(self.runner.computed_items(len(group)) for group in batches(plan.tiles, size))
        computed = items * plan.window_h * plan.window_w
        self.last_stats = {"tiling": plan.mode, "pixels": h * w, "pixels_computed": computed,
                           "compute_ratio": round(computed / (h * w), 4), "tiling_ratio": round(plan.compute_ratio, 4),
                           "windows": len(plan.tiles), "window": [plan.window_h, plan.window_w]}
        if plan.whole_image:
            return self._infer(x[None], np.ones((1, 1, h, w), np.float32))[0]
        padded = Padded(x, plan.pad)
        assembler = Assembler(plan, cfg.channels, cfg.scale)
        for group in batches(plan.tiles, size):
            xs, valid = padded.windows(plan, group)
            assembler.add(self._infer(xs, valid), group)
        return assembler.result()

    def _infer(self, xs: np.ndarray, valid: np.ndarray) -> np.ndarray:
        y = self.runner.infer(xs, valid)
        check_engine_output(y, xs.shape, self.config, self.runner.path)
        return y
