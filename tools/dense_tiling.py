#!/usr/bin/env python3
"""Dense models' whole images: pixels computed and time, the memory-sized plan against the former
192-pixel tiles, beside the sparse model's ``cells`` restore, in ONNX Runtime, interleaved:

    python tools/dense_tiling.py [H W]        # default 480 400; EDSR+NSR x2 and its dense twin

The dense twin (k = d = 1, the bench's) of EDSR+NSR x2 (16 blocks, 64 units, k=4, d=16) is exported as a
dense model; ``before`` restores through the plan dense models had (tiles of 192 pixels, each window with
its receptive field), ``now`` through the engine's own plan (the whole image when the memory budget
holds it). Both are exact (equal to the whole-image result); the script checks that they agree.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

THREADS = 2


def former_plan(height: int, width: int, radius: int, tile: int = 192):
    """Dense models' plan before windows followed the memory budget: the fewest tiles of at most ``tile``
    pixels a side, each window with its receptive field (the engine's largest window, as the rule says)."""
    from nsr_deploy.runtimes.host.tiling import exact_plan

    side = tile + 2 * radius
    return exact_plan(height, width, radius, max_side=(side, side))


def main(h: str = "480", w: str = "400") -> None:
    from make_bench_checkpoint import EDSR_NSR_X2

    from nsr_deploy.bench.engines import dense_twin_of
    from nsr_deploy.core.machine import describe_cpu
    from nsr_deploy.core.timing import measure_interleaved
    from nsr_deploy.exporters.pipeline import ExportOptions, export
    from nsr_deploy.models.checkpoint import LoadedModel
    from nsr_deploy.models.network import NSRNet
    from nsr_deploy.runtimes import load

    h, w = int(h), int(w)
    sparse = LoadedModel(NSRNet(EDSR_NSR_X2).eval(), "edsr-nsr-x2", "built", "0" * 64, "edsr-nsr-x2")
    twin = dense_twin_of(sparse)
    root = Path(tempfile.mkdtemp(prefix="dense-tiling-"))
    for name, model, form in (("twin", twin, "matmul"), ("sparse", sparse, "grouped")):
        export(model, root / name, "onnx", ExportOptions(conv_form=form, threads=THREADS, show_progress=False))
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    before = load(root / "twin", backend="onnxruntime", threads=THREADS).activate()
    radius = twin.config.receptive_radius()
    before.plan = lambda hh, ww: former_plan(hh, ww, radius)
    now = load(root / "twin", backend="onnxruntime", threads=THREADS).activate()
    cells = load(root / "sparse", backend="onnxruntime", threads=THREADS, tiling="cells").activate()
    engines = {"dense twin, 192-pixel tiles (before)": before, "dense twin, memory-sized plan (now)": now,
               "sparse, cells": cells}
    outs = {k: e.restore(img) for k, e in engines.items()}
    assert np.array_equal(outs["dense twin, 192-pixel tiles (before)"], outs["dense twin, memory-sized plan (now)"])
    timings = measure_interleaved({k: (lambda e=e: e.restore(img)) for k, e in engines.items()}, 6, 1, 3)
    print(f"{describe_cpu()}, {THREADS} threads, ONNX Runtime; EDSR+NSR x2 and its dense twin, {h}x{w}, "
          "median of 6, interleaved")
    for k, e in engines.items():
        e.restore(img)
        s = e.last_stats
        print(f"  {k:38s} {timings[k].median / 1e3:6.2f} s   {s['windows']:3d} windows of "
              f"{s['window'][0]}x{s['window'][1]}   pixels computed {s['compute_ratio']:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
