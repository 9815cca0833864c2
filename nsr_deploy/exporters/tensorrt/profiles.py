"""TensorRT optimisation profiles for the patch network: min / opt / max shapes of ``x`` and ``valid``.

Pure functions of the model's config and the export options (no TensorRT), so they are unit tested.

A TensorRT engine accepts only shapes inside one of its profiles, and tunes its kernels for each
profile's ``opt`` shape. What the host-side tiling (:mod:`nsr_deploy.runtimes.host.tiling`) feeds the
engine decides the profiles:

``tiles``        the windows of the tiling modes: ``patch x patch`` in ``reference`` mode (tuned for), up
                 to ``CELL_MAX + 2 * CELL_HALO`` in ``cells`` mode; for dense models the ``exact`` tiles
                 (up to ``TILE_TARGET + 2 * receptive radius``). Batch: the patch batch range.
``whole-image``  sparse models only: the reference pools an image with a side below ``4 * patch`` as one
                 patch, so such images reach the engine whole, one at a time: a square profile and, for
                 strips, a wide and a tall one. All are capped by one pixel budget, because TensorRT
                 sizes an execution context's activation memory by the largest profile shape.

The ``grouped`` conv form has its patch batch fixed in the graph (ONNX ``Conv.group``): its profiles
keep that batch and only the tile size varies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.host.tiling import CELL_HALO, CELL_MAX, TILE_TARGET

DEFAULT_PATCH_BATCH = 16
MIN_SIDE = 1  # whole images of any size down to one pixel reach the engine unchanged
WHOLE_IMAGE_PIXEL_BUDGET = 512 * 512  # per profile maximum: batch x height x width of the whole-image profile
INPUTS = ("x", "valid")


@dataclass(frozen=True)
class DimRange:
    """min <= opt <= max of one dimension."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    def covers(self, value: int) -> bool:
        return self.min <= value <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class ShapeProfile:
    """One optimisation profile: ranges of the patch batch, tile height and tile width."""

    name: str
    batch: DimRange
    height: DimRange
    width: DimRange

    def input_shapes(self, channels: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """``{input: (min shape, opt shape, max shape)}`` as ``IOptimizationProfile.set_shape`` takes them."""
        out = {}
        for name, c in (("x", channels), ("valid", 1)):
            out[name] = tuple((getattr(self.batch, k), c, getattr(self.height, k), getattr(self.width, k))
                              for k in ("min", "opt", "max"))
        return out

    def as_dict(self, channels: int) -> dict:
        shapes = {name: dict(zip(("min", "opt", "max"), map(list, triple)))
                  for name, triple in self.input_shapes(channels).items()}
        return {"name": self.name, "batch": self.batch.as_list(), "height": self.height.as_list(),
                "width": self.width.as_list(), "shapes": shapes}


def batch_range(static_batch: int | None, batch_profile: tuple[int, int, int] | None,
                patch_batch: int | None) -> DimRange:
    """The patch batch range: fixed for static-batch graphs; else ``--batch-profile`` or ``1..patch batch``."""
    if static_batch:
        if batch_profile:
            raise NSRError(f"--batch-profile needs a dynamic-batch conv form (matmul or dense-mix): this ONNX "
                           f"model fixes the patch batch at {static_batch} (conv form 'grouped'; set it with "
                           f"--patch-batch)")
        return DimRange(static_batch, static_batch, static_batch)
    if batch_profile:
        try:
            return DimRange(*batch_profile)
        except (TypeError, ValueError):
            raise NSRError(f"--batch-profile wants MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {batch_profile}") \
                from None
    n = patch_batch or DEFAULT_PATCH_BATCH
    return DimRange(1, n, n)


def tile_side_range(config) -> DimRange:
    """Tile sides the tiling modes produce for this model (see the module docstring)."""
    if not config.sparse:
        side = TILE_TARGET + 2 * config.receptive_radius()
        return DimRange(MIN_SIDE, side, side)
    return DimRange(MIN_SIDE, config.patch_size, max(config.patch_size, CELL_MAX + 2 * CELL_HALO))


def whole_image_profiles(config, batch: DimRange) -> list[ShapeProfile]:
    """Profiles for whole images (sparse models): one square profile that holds every image below
    ``4 * patch`` on both sides (more, up to the pixel budget), and, where the budget allows longer
    strips, a wide and a tall one for images whose short side is below ``4 * patch``. A static batch of
    N spends the budget N times."""
    short = 4 * config.patch_size - 1  # the longest short side the reference pools whole
    budget = WHOLE_IMAGE_PIXEL_BUDGET // batch.max
    square = max(short + 1, math.isqrt(budget))
    long = max(square, budget // short)
    profiles = [ShapeProfile("whole-image", batch, DimRange(MIN_SIDE, short + 1, square),
                             DimRange(MIN_SIDE, short + 1, square))]
    if long > square:
        strip, length = DimRange(MIN_SIDE, short, short), DimRange(MIN_SIDE, square, long)
        profiles += [ShapeProfile("whole-image-wide", batch, strip, length),
                     ShapeProfile("whole-image-tall", batch, length, strip)]
    return profiles


def profile_plan(config, static_batch: int | None = None, batch_profile: tuple[int, int, int] | None = None,
                 patch_batch: int | None = None) -> list[ShapeProfile]:
    """The engine's optimisation profiles, in the order the runner tries them."""
    batch = batch_range(static_batch, batch_profile, patch_batch)
    tiles = tile_side_range(config)
    profiles = [ShapeProfile("tiles", batch, tiles, tiles)]
    if config.sparse:
        profiles += whole_image_profiles(config, batch if static_batch else DimRange(1, 1, 1))
    return profiles


def max_batch(profiles: list[ShapeProfile]) -> int:
    """The largest patch batch any profile takes (what Triton may batch up to)."""
    return max(p.batch.max for p in profiles)
