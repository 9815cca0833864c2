"""An exported engine plus its manifest: restores whole images of any size.

``Engine.restore`` takes uint8 ``HxW``/``HxWxC`` arrays (returns uint8) or float32 in [0, 1]
(returns float32, unclipped), tiles them on the host as the chosen tiling mode says, runs the
runner on bounded batches of patches and blends the result.

Before an image is restored, the memory it needs is estimated (:meth:`Engine.memory_needed`: the input,
the output at ``scale^2`` its size and its blend weights, the padded copy, one batch of windows with
the network's activations, the uint8 result) and checked against the memory budget
(:func:`nsr_deploy.core.budgets.check_memory`): an x8 model asks 64x the input's pixels of output, so a
pixel budget alone does not bound a run.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.core.budgets import check_batch, check_memory, check_pixels, check_threads, max_memory
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.base import Runner
from nsr_deploy.runtimes.contract import check_engine_output
from nsr_deploy.runtimes.host.tiling import CELL_BORDERS, Assembler, Padded, batches, make_plan

TILINGS = ("reference", "cells")
DEFAULT_TILE_BATCH = 16
F32 = 4
# feature maps alive at once inside the network, in units of its widest layer (a conv's input and output
# and the skip branch): what one batch of windows costs beyond its inputs and outputs
LIVE_FEATURE_MAPS = 3
# dense models' windows take at most this share of the memory the budget leaves beside the image: the
# runtime's own buffers (arenas, packed weights, reorders) come on top of the estimate
DENSE_CALL_SHARE = 0.5


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
        check_batch(tile_batch, "tile_batch")
        check_threads(runner.threads, "threads")  # before activation starts any thread pool
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
        if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
            raise NSRError(f"unsupported image dtype {img.dtype} (uint8 or float)")
        self.check_memory(chw.shape[2], chw.shape[1], uint8=img.dtype == np.uint8)
        x = chw.astype(np.float32)
        if img.dtype == np.uint8:
            np.divide(x, np.float32(255.0), out=x)  # in place: no second float copy of a large image
        y = self._restore_chw(x)
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
        window = None if cfg.sparse else self.window_pixels(height, width)
        try:
            return make_plan(self.tiling, height, width, cfg.patch_size, cfg.sparse, cfg.receptive_radius(),
                             self.runner.static_batch, self.border, window, self.runner.max_window())
        except ValueError as e:  # an engine whose largest window cannot hold the receptive field
            raise NSRError(f"{self.runner.path}: {e}") from None

    def batch_size(self) -> int:
        return self.tile_batch or self.runner.static_batch or DEFAULT_TILE_BATCH

    def _bytes_per_window_pixel(self) -> int:
        """One window pixel of a call: its input, ``valid``, output and the network's live feature maps."""
        cfg = self.config
        c, s = cfg.channels, cfg.scale
        widest = max(cfg.units, cfg.block_width * (cfg.groups if cfg.sparse else 1), c * s * s)
        return F32 * (c + 1 + c * s * s + LIVE_FEATURE_MAPS * widest)

    def _image_bytes(self, height: int, width: int, uint8: bool = True) -> int:
        """The caller's image, its float copy and the float output: what a restoration holds besides its calls."""
        c, s, pixels = self.config.channels, self.config.scale, height * width
        return c * pixels * (1 if uint8 else F32) + F32 * c * pixels * (1 + s * s)

    def window_pixels(self, height: int, width: int, uint8: bool = True) -> int:
        """Dense models: the most window pixels one call may hold, from the memory budget (a share of what is
        left beside the image), so that an image that fits runs whole and a larger one in the fewest,
        largest windows (:func:`~nsr_deploy.runtimes.host.tiling.exact_plan`)."""
        budget, _ = max_memory()
        left = budget - self._image_bytes(height, width, uint8)
        return max(1, int(left * DENSE_CALL_SHARE) // self._bytes_per_window_pixel())

    def call_size(self, plan) -> int:
        """Windows per engine call: the tile batch; dense models' large windows: as many as fit the window
        pixels the plan was sized for (:meth:`window_pixels`; at least one)."""
        size = self.batch_size()
        if plan.call_pixels and not plan.whole_image:
            size = max(1, min(size, plan.call_pixels // (plan.window_h * plan.window_w)))
        return size

    def memory_needed(self, height: int, width: int, uint8: bool = True) -> int:
        """Bytes one ``height`` x ``width`` image's restoration allocates at its peak, beside the model.

        Measured: ``restore`` with sr-x2 (torch, reference tiling, 1 thread) on a 1632x1224 photo peaked
        at 466 MiB resident, 216 MiB above the same run on a 64x48 image (250 MiB); the estimate's
        difference between the two is 225 MiB.
        """
        cfg, s = self.config, self.config.scale
        c, pixels = cfg.channels, height * width
        plan = self.plan(height, width)
        image = c * pixels * (1 if uint8 else F32)  # what the caller holds
        x = F32 * c * pixels
        padded = 0 if plan.whole_image or plan.pad == 0 else F32 * c * (height + 2 * plan.pad) * (width + 2 * plan.pad)
        out = F32 * c * pixels * s * s
        weights = F32 * pixels * s * s if plan.overlapping and not plan.whole_image else 0
        n = self.runner.computed_items(min(self.call_size(plan), len(plan.tiles)))
        batch = n * plan.window_h * plan.window_w * self._bytes_per_window_pixel()
        assembling = x + padded + out + weights + batch
        # uint8 results: the rounded copy and the one the image writer makes; float results: a contiguous copy
        finishing = x + out + (2 * c * pixels * s * s if uint8 else out)
        return image + max(assembling, finishing)

    def check_memory(self, width: int, height: int, where: str = "image", uint8: bool = True) -> None:
        """Refuse an image whose restoration needs more memory than the budget (before any is allocated)."""
        check_pixels(width, height, where)
        s = self.config.scale
        check_memory(self.memory_needed(height, width, uint8), where,
                     f"restoring {width}x{height}" + (f" at x{s} to {width * s}x{height * s}" if s > 1 else ""),
                     "input, output, blend weights, one batch of tiles")

    def restore_chw(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[C, H, W]`` -> float32 ``[C, H*s, W*s]``."""
        self.check_memory(x.shape[2], x.shape[1], uint8=False)
        return self._restore_chw(x)

    def _restore_chw(self, x: np.ndarray) -> np.ndarray:
        cfg = self.config
        h, w = x.shape[1:]
        plan = self.plan(h, w)
        size = self.call_size(plan)
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
