"""Host-side tiling in numpy: cut an image into the engine's patches and put the results together.

Every plan is a list of equally sized windows (one engine batch item each, so windows batch
together), the part of each window that is kept, and a blend weight:

``reference``  the reference trainer's evaluation (:mod:`~nsr_deploy.core.geometry`): images with a side below
               ``4 * patch`` are one patch; larger ones are cut into overlapping patches of the
               reflect-padded image whose centres are averaged with the trainer's weights.
``cells``      the fast mode: non-overlapping cells, each run inside a window that adds a thin halo
               and is pooled as one patch. It computes about 1.1-1.3x the image's pixels where
               ``reference`` computes about 2.6x. At the image border its windows are ``clamp``-ed
               inside the image (the halo goes to the inner side), so every conv zero-pads at the
               image edge as on a whole image and at the edges of every training crop. The
               reference's reflect padding there (``border="reflect"``) shows the body content
               where the skip sees zeros, which the bundled models never met in training: a dark,
               tinted fringe 2-4 pixels wide (``nsr_deploy.checks.frame`` measures it).
``exact``      dense models (no pooling): windows that hold each tile's whole receptive field and
               stay inside the image, so tiled equals whole-image output exactly; the whole image,
               or the largest windows the memory budget and the engine allow (the least context
               computed twice).

The ``valid`` mask that goes with each window is 1 on image pixels, 0 on reflect padding: the skip
conv sees zeros beyond the image, as on the reference's whole image.
Images here are float32 ``[C, H, W]``; windows ``[N, C, h, w]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from nsr_deploy.core.geometry import REFERENCE_PAD, reference_windows, uses_whole_image

CELL_MAX = 80  # largest cell side of the ``cells`` mode (window = cell + 2 * halo)
CELL_HALO = 3
CELL_BORDERS = ("clamp", "reflect")  # what ``cells`` windows do at the image border
GRID_SLACK = 2  # extra rows / columns of cells tried to fill a fixed-batch engine's calls
TILE_TARGET = 192  # dense models: the window side (plus context) a TensorRT profile is built for


@dataclass(frozen=True)
class Tile:
    """A window at ``(y, x)`` in image coordinates (negative: in the reflect padding); the kept part
    is ``[ky0, ky1) x [kx0, kx1)`` in window coordinates."""

    y: int
    x: int
    ky0: int
    kx0: int
    ky1: int
    kx1: int
    weight: float = 1.0


@dataclass(frozen=True)
class Plan:
    mode: str
    height: int
    width: int
    window_h: int
    window_w: int
    tiles: tuple[Tile, ...]
    overlapping: bool  # kept parts overlap: blend with weights; otherwise write straight through
    call_pixels: int | None = None  # dense plans: the most window pixels one call may hold (what it was sized for)

    @property
    def whole_image(self) -> bool:
        return len(self.tiles) == 1 and (self.window_h, self.window_w) == (self.height, self.width) \
            and self.tiles[0].y == 0 and self.tiles[0].x == 0

    @property
    def pad(self) -> int:
        """Reflect padding the windows need around the image."""
        if not self.tiles:
            return 0
        return max(0, max(max(-t.y, -t.x, t.y + self.window_h - self.height, t.x + self.window_w - self.width)
                          for t in self.tiles))

    @property
    def pixels_computed(self) -> int:
        return len(self.tiles) * self.window_h * self.window_w

    @property
    def compute_ratio(self) -> float:
        return self.pixels_computed / float(self.height * self.width)


def whole_plan(height: int, width: int, mode: str) -> Plan:
    return Plan(mode, height, width, height, width, (Tile(0, 0, 0, 0, height, width),), False)


def reference_plan(height: int, width: int, patch: int, pooled: bool = True) -> Plan:
    """The reference trainer's plan. ``pooled=False`` (dense models): the whole image."""
    if not pooled or uses_whole_image(height, width, patch):
        return whole_plan(height, width, "reference")
    pad = REFERENCE_PAD
    tiles = tuple(Tile(w.y, w.x, pad, pad, patch - pad, patch - pad, w.weight)
                  for w in reference_windows(height, width, patch))
    return Plan("reference", height, width, patch, patch, tiles, True)


def _splits(size: int, n: int) -> list[tuple[int, int]]:
    """``size`` cut into ``n`` equal-as-possible cells."""
    cuts = [round(i * size / n) for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _cell_grid(height: int, width: int, patch: int, cell_max: int, halo: int, batch: int | None) -> tuple[int, int]:
    """Rows and columns of cells. The fewest cells no longer than ``cell_max``, unless the engine's
    batch is fixed: its short last call is padded with copies that are computed and dropped, so a
    grid with a few more, smaller cells that fills its calls can compute less. Then the grid (up to
    ``GRID_SLACK`` more rows and columns, cells no shorter than the pooling patch) with the fewest
    pixels computed, padding included; ties go to fewer windows. 512x512 in calls of 16: 8x8 cells
    of 64 (one call of 64 windows of 70x70) instead of 7x7 of 74 (49 windows of 80x80, padded to 64)."""
    rows, cols = math.ceil(height / cell_max), math.ceil(width / cell_max)
    if not batch or batch <= 1:
        return rows, cols

    def cost(r: int, c: int) -> tuple[int, int]:
        windows = r * c
        calls = math.ceil(windows / batch)
        return calls * batch * (math.ceil(height / r) + 2 * halo) * (math.ceil(width / c) + 2 * halo), windows

    grids = [(r, c) for r in range(rows, rows + GRID_SLACK + 1) for c in range(cols, cols + GRID_SLACK + 1)
             if (r, c) == (rows, cols) or (height // r >= patch and width // c >= patch)]
    return min(grids, key=lambda rc: cost(*rc))


def cells_plan(height: int, width: int, patch: int, cell_max: int = CELL_MAX, halo: int = CELL_HALO,
               batch: int | None = None, border: str = "clamp") -> Plan:
    """Non-overlapping cells with a ``halo`` of context, each pooled as one patch; ``batch``: the
    engine's fixed batch, if it has one (see :func:`_cell_grid`); ``border``: ``clamp`` windows
    inside the image or ``reflect``-pad it (see the module docstring).

    Images the reference pools whole (a side below ``4 * patch``) stay whole: that is the
    reference's own result and computes each pixel once.
    """
    if uses_whole_image(height, width, patch):
        return whole_plan(height, width, "cells")
    n_rows, n_cols = _cell_grid(height, width, patch, cell_max, halo, batch)
    rows, cols = _splits(height, n_rows), _splits(width, n_cols)
    ch = max(b - a for a, b in rows)
    cw = max(b - a for a, b in cols)
    if border not in CELL_BORDERS:
        raise ValueError(f"unknown border {border!r} (choose from {', '.join(CELL_BORDERS)})")
    wh, ww = ch + 2 * halo, cw + 2 * halo

    def place(start: int, window: int, size: int) -> int:
        if border == "reflect":
            return start - halo
        return min(max(0, start - halo), max(0, size - window))

    tiles = []
    for y0, y1 in rows:
        wy = place(y0, wh, height)
        for x0, x1 in cols:
            # every window is wh x ww; shorter cells keep their top-left
            wx = place(x0, ww, width)
            tiles.append(Tile(wy, wx, y0 - wy, x0 - wx, y1 - wy, x1 - wx))
    return Plan("cells", height, width, wh, ww, tuple(tiles), False)


def exact_plan(height: int, width: int, radius: int, window_pixels: int | None = None,
               max_side: tuple[int, int] | None = None) -> Plan:
    """Dense models: windows that hold each tile's whole receptive field, clamped inside the image (so the
    convs zero-pad exactly where the whole image would): equal to the whole-image result.

    The whole image when it fits ``window_pixels`` (what one call may hold: the memory budget's share,
    :meth:`~nsr_deploy.runtimes.engine.Engine.window_pixels`) and ``max_side`` (an engine's largest window);
    else the grid of ``rows`` x ``cols`` tiles that fits them with the fewest pixels computed (each window
    repeats ``2 * radius`` rows and columns of context, so bigger windows waste less); ties: fewer windows.
    """
    limit = window_pixels or height * width
    max_h, max_w = max_side or (height, width)
    best = None
    for rows in range(1, height + 1):
        wh = _exact_side(height, rows, radius)
        if wh > max_h:
            continue
        cols = _fewest_cols(width, radius, min(max_w, limit // wh))
        if cols is None:
            continue
        ww = _exact_side(width, cols, radius)
        cost = (rows * cols * wh * ww, rows * cols)
        if best is None or cost < best[0]:
            best = (cost, rows, cols)
        if wh <= 2 * radius + 1:  # more rows only repeat more context
            break
    if best is None and window_pixels is not None:  # a budget this small: the memory check refuses the image
        return exact_plan(height, width, radius, None, max_side)
    if best is None:
        raise ValueError(f"no exact tiling of {height}x{width} fits windows of {limit} pixels "
                         f"and sides {max_h}x{max_w} with a receptive radius of {radius}")
    _, n_rows, n_cols = best
    if (n_rows, n_cols) == (1, 1):
        return replace(whole_plan(height, width, "exact"), call_pixels=window_pixels)
    rows, cols = _splits(height, n_rows), _splits(width, n_cols)
    wh, ww = _exact_side(height, n_rows, radius), _exact_side(width, n_cols, radius)
    tiles = []
    for y0, y1 in rows:
        wy = min(max(0, y0 - radius), height - wh)
        for x0, x1 in cols:
            wx = min(max(0, x0 - radius), width - ww)
            tiles.append(Tile(wy, wx, y0 - wy, x0 - wx, y1 - wy, x1 - wx))
    return Plan("exact", height, width, wh, ww, tuple(tiles), False, window_pixels)


def _exact_side(size: int, n: int, radius: int) -> int:
    """A window's side when ``size`` is cut into ``n`` spans: the longest span plus its context."""
    return min(size, math.ceil(size / n) + 2 * radius) if n > 1 else size


def _fewest_cols(width: int, radius: int, max_w: int) -> int | None:
    """The fewest spans of ``width`` whose windows are at most ``max_w`` wide (fewer spans: less context
    repeated), or None."""
    if width <= max_w:
        return 1
    if max_w <= 2 * radius:
        return None
    cols = max(2, math.ceil(width / (max_w - 2 * radius)))
    while _exact_side(width, cols, radius) > max_w:
        cols += 1
    return cols


def make_plan(mode: str, height: int, width: int, patch: int, sparse: bool, radius: int,
              batch: int | None = None, border: str = "clamp", window_pixels: int | None = None,
              max_side: tuple[int, int] | None = None) -> Plan:
    """The plan of ``mode``; ``batch``: the engine's fixed batch, if any (``cells`` fills its calls);
    ``border``: what ``cells`` does at the image border (``reference`` always reflects);
    ``window_pixels`` / ``max_side``: dense models' largest window (see :func:`exact_plan`)."""
    if not sparse:  # no pooling: every mode is the exact whole-image result, tiled to bound memory
        return exact_plan(height, width, radius, window_pixels, max_side)
    if mode == "reference":
        return reference_plan(height, width, patch)
    if mode == "cells":
        return cells_plan(height, width, patch, batch=batch, border=border)
    raise ValueError(f"unknown tiling {mode!r}")


class Padded:
    """The image reflect-padded once, for cutting windows (reflect beyond twice the size: edge)."""

    def __init__(self, img: np.ndarray, pad: int):
        self.pad = pad
        h, w = img.shape[1:]
        if pad == 0:
            self.data = img
        elif pad < h and pad < w:
            self.data = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
        else:  # tiny images: reflect cannot reach that far
            self.data = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")

    def windows(self, plan: Plan, tiles) -> tuple[np.ndarray, np.ndarray]:
        p, wh, ww = self.pad, plan.window_h, plan.window_w
        c = self.data.shape[0]
        xs = np.empty((len(tiles), c, wh, ww), np.float32)
        valid = np.zeros((len(tiles), 1, wh, ww), np.float32)
        for i, t in enumerate(tiles):
            xs[i] = self.data[:, t.y + p:t.y + p + wh, t.x + p:t.x + p + ww]
            y0, x0 = max(0, -t.y), max(0, -t.x)
            y1, x1 = min(wh, plan.height - t.y), min(ww, plan.width - t.x)
            valid[i, :, y0:y1, x0:x1] = 1.0
        return xs, valid


class Assembler:
    """Puts window outputs (at output resolution) together: straight writes, or a weighted mean
    where kept parts overlap (the reference's blending)."""

    def __init__(self, plan: Plan, channels: int, scale: int):
        self.plan, self.scale = plan, scale
        shape = (channels, plan.height * scale, plan.width * scale)
        self.out = np.zeros(shape, np.float32)
        self.weight = np.zeros((1, *shape[1:]), np.float32) if plan.overlapping else None

    def add(self, outputs: np.ndarray, tiles) -> None:
        s = self.scale
        for out, t in zip(outputs, tiles):
            src = out[:, t.ky0 * s:t.ky1 * s, t.kx0 * s:t.kx1 * s]
            oy, ox = (t.y + t.ky0) * s, (t.x + t.kx0) * s
            dst = (slice(None), slice(oy, oy + src.shape[1]), slice(ox, ox + src.shape[2]))
            if self.weight is None:
                self.out[dst] = src
            else:
                self.out[dst] += np.float32(t.weight) * src
                self.weight[dst] += np.float32(t.weight)

    def result(self) -> np.ndarray:
        if self.weight is not None:
            np.divide(self.out, self.weight, out=self.out)
            self.weight = None
        return self.out


def batches(tiles, size: int) -> Iterator[list[Tile]]:
    tiles = list(tiles)
    for i in range(0, len(tiles), size):
        yield tiles[i:i + size]
