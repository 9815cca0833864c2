"""Conformance vectors (``export --conformance``): small inputs cut from a bundled sample, the window
list of each tiling for them and the output of the exported ONNX model through :class:`Engine`, so that
an implementation of docs/contract.md in any language can test itself against the folder alone.

Inputs are sized from the model's patch: one image that stays whole (one side below the threshold, the
other above: the rule is *either* side) and one that is tiled, with odd sides so that grid centring,
strip anchoring and uneven cells all show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FOLDER = "conformance"
TILINGS = ("reference", "cells")
SOURCE_SAMPLE = "sample-1.png"


def vector_sizes(patch: int) -> dict[str, tuple[int, int]]:
    """(height, width) of each input: ``whole`` (height below 4 x patch, width above), ``tiled``."""
    whole = 4 * patch
    return {"whole": (whole - 5, whole + 9), "tiled": (whole + 13, whole + 7)}


def sample_crop(channels: int, height: int, width: int) -> np.ndarray:
    """A ``height x width`` crop of the bundled sample (tiled mirror-wise if the sample is smaller)."""
    from importlib import resources

    from nsr_deploy.runtimes.host.images import read_image

    with resources.as_file(resources.files("nsr_deploy.assets") / "samples" / SOURCE_SAMPLE) as path:
        pixels = read_image(path, channels).pixels
    reps = (-(-height // pixels.shape[0]), -(-width // pixels.shape[1])) + (1,) * (pixels.ndim - 2)
    return np.ascontiguousarray(np.tile(pixels, reps)[:height, :width])


def window_list(plan, static_batch: int | None) -> dict:
    """The plan as docs/contract.md section 3 states it."""
    return {"tiling": plan.mode, "height": plan.height, "width": plan.width,
            "window": [plan.window_h, plan.window_w], "pad": plan.pad, "static_batch": static_batch,
            "fields": ["y", "x", "ky0", "kx0", "ky1", "kx1", "weight"],
            "windows": [[t.y, t.x, t.ky0, t.kx0, t.ky1, t.kx1, t.weight] for t in plan.tiles]}


def write_vectors(folder: Path, onnx_file: str, cfg, threads: int | None = None) -> dict:
    """Write ``folder/conformance/`` with the ONNX model ``folder/onnx_file``; returns the manifest section."""
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.host.images import write_image
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    out = folder / FOLDER
    out.mkdir()
    vectors = []
    with OrtRunner(str(folder / onnx_file), threads) as runner:
        batch = runner.static_batch
        for name, (h, w) in vector_sizes(cfg.patch_size).items():
            image = sample_crop(cfg.channels, h, w)
            write_image(out / f"{name}.png", image)
            for tiling in TILINGS if name == "tiled" else TILINGS[:1]:
                engine = Engine(runner, cfg, tiling)
                stem = f"{name}-{tiling}"
                doc = window_list(engine.plan(h, w), batch)
                (out / f"{stem}.windows.json").write_text(json.dumps(doc) + "\n")
                write_image(out / f"{stem}.expected.png", engine.restore(image))
                vectors.append({"input": f"{FOLDER}/{name}.png", "tiling": tiling,
                                "windows": f"{FOLDER}/{stem}.windows.json",
                                "expected": f"{FOLDER}/{stem}.expected.png"})
    section = {"folder": FOLDER, "static_batch": batch, "engine": onnx_file, "vectors": vectors,
               "pass": "window lists equal; outputs within one 8-bit level on at most 0.1% of values"}
    return section
