"""Conformance vectors (``export --conformance``): small inputs cut from a bundled sample, the window
list of each tiling for them and what ``nsr-deploy restore`` writes for them with the exported ONNX model
(:func:`~nsr_deploy.runtimes.host.restore_files.restore_file`: the image reader, :class:`Engine`, the
image writer), so that an implementation of docs/contract.md in any language can test itself against the
folder alone.

Inputs are sized from the model's patch: one image that stays whole (one side below the threshold, the
other above: the rule is *either* side) and one that is tiled, with odd sides so that grid centring,
strip anchoring and uneven cells all show. Then one small file for each input rule of the contract's
section 2 (16-bit colour and grey, grey + alpha, palette with transparency, RGBA, an EXIF orientation):
each is one window, so together they cost less than the tiled image.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FOLDER = "conformance"
TILINGS = ("reference", "cells")
SOURCE_SAMPLE = "sample-1.png"
EXIF_ORIENTATION = 6  # "rotate 90 degrees clockwise to display": what most cameras write held upright
PALETTE_COLOURS = 64


def vector_sizes(patch: int) -> dict[str, tuple[int, int]]:
    """(height, width) of each input: ``whole`` (height below 4 x patch, width above), ``tiled``."""
    whole = 4 * patch
    return {"whole": (whole - 5, whole + 9), "tiled": (whole + 13, whole + 7)}


def sample_crop(channels: int, height: int, width: int, centred: bool = False) -> np.ndarray:
    """A ``height x width`` crop of the bundled sample (tiled if the sample is smaller), from its top left
    or ``centred`` (the sample's corner is nearly flat: a small crop there has a handful of colours)."""
    from importlib import resources

    from nsr_deploy.runtimes.host.images import read_image

    with resources.as_file(resources.files("nsr_deploy.assets") / "samples" / SOURCE_SAMPLE) as path:
        pixels = read_image(path, channels).pixels
    reps = (-(-height // pixels.shape[0]), -(-width // pixels.shape[1])) + (1,) * (pixels.ndim - 2)
    tiled = np.tile(pixels, reps)
    y, x = ((tiled.shape[0] - height) // 2, (tiled.shape[1] - width) // 2) if centred else (0, 0)
    return np.ascontiguousarray(tiled[y:y + height, x:x + width])


def window_list(plan, static_batch: int | None) -> dict:
    """The plan as docs/contract.md section 3 states it."""
    return {"tiling": plan.mode, "height": plan.height, "width": plan.width,
            "window": [plan.window_h, plan.window_w], "pad": plan.pad, "static_batch": static_batch,
            "fields": ["y", "x", "ky0", "kx0", "ky1", "kx1", "weight"],
            "windows": [[t.y, t.x, t.ky0, t.kx0, t.ky1, t.kx1, t.weight] for t in plan.tiles]}


# -- the input-rule files -------------------------------------------------------------------------------
def png_bytes(samples: np.ndarray, colour_type: int, depth: int) -> bytes:
    """A PNG holding ``samples`` (HxW or HxWxC) as they are: Pillow writes no 16-bit colour PNG."""
    h, w = samples.shape[:2]
    rows = samples.astype(">u2" if depth == 16 else "u1").reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def _alpha(h: int, w: int) -> np.ndarray:
    """Hard 0/255 blocks beside a ramp: bicubic overshoot at the edges shows the clipping."""
    i, j = np.mgrid[:h, :w]
    ramp = (j * 255) // max(w - 1, 1)
    return np.where((i // 6 + j // 7) % 3 == 0, 255 * ((i // 6) % 2), ramp).astype(np.uint8)


def _with_low_bytes(samples: np.ndarray) -> np.ndarray:
    """8-bit samples as 16-bit ones with varied low bytes (fixed seed: vectors regenerate identically)."""
    low = np.random.default_rng(0).integers(0, 256, samples.shape)
    return (samples.astype(np.uint16) << 8) | low.astype(np.uint16)


def format_inputs(patch: int) -> dict[str, tuple[str, Image.Image | bytes]]:
    """name -> (what it shows, a PIL image to save as PNG or the PNG's bytes), each below 4 x patch."""
    h, w = 2 * patch + 5, 2 * patch + 11
    rgb = sample_crop(3, h, w, centred=True)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = _alpha(h, w)
    palette = Image.fromarray(rgb).quantize(PALETTE_COLOURS)
    used = int(np.asarray(palette).max()) + 1
    palette.info["transparency"] = bytes((k * 37) % 256 for k in range(used // 2))  # the other half opaque
    exif = Image.Exif()
    exif[0x0112] = EXIF_ORIENTATION
    oriented = Image.fromarray(rgb)
    oriented.info["exif"] = exif.tobytes()
    return {
        "rgb16": ("16-bit RGB", png_bytes(_with_low_bytes(rgb), 2, 16)),
        "grey16": ("16-bit grey", png_bytes(_with_low_bytes(grey), 0, 16)),
        "grey-alpha": ("8-bit grey + alpha", Image.fromarray(np.dstack([grey, alpha]), "LA")),
        "palette": ("palette with transparency (tRNS)", palette),
        "rgba": ("8-bit RGBA", Image.fromarray(np.dstack([rgb, alpha]), "RGBA")),
        "exif": (f"RGB with an eXIf chunk, orientation {EXIF_ORIENTATION}", oriented),
    }


def _save(path: Path, content: Image.Image | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content.save(path, "PNG", **{k: content.info[k] for k in ("transparency", "exif") if k in content.info})


# -- the vectors ----------------------------------------------------------------------------------------
def _inputs(out: Path, cfg) -> list[tuple[str, str, tuple[str, ...]]]:
    """Write every input into ``out``: (file name, what it shows, its tilings)."""
    from nsr_deploy.runtimes.host.images import write_image

    listed = []
    for name, (h, w) in vector_sizes(cfg.patch_size).items():
        write_image(out / f"{name}.png", sample_crop(cfg.channels, h, w))
        listed.append((f"{name}.png", "8-bit", TILINGS if name == "tiled" else TILINGS[:1]))
    for name, (shows, content) in format_inputs(cfg.patch_size).items():
        _save(out / f"{name}.png", content)
        listed.append((f"{name}.png", shows, TILINGS[:1]))  # one window: every tiling plans the same
    return listed


def write_vectors(folder: Path, onnx_file: str, cfg, threads: int | None = None) -> dict:
    """Write ``folder/conformance/`` with the ONNX model ``folder/onnx_file``; returns the manifest section."""
    from nsr_deploy.core.errors import NSRError
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.host.images import read_image
    from nsr_deploy.runtimes.host.restore_files import Job, restore_file
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    out = folder / FOLDER
    out.mkdir()
    vectors = []
    with OrtRunner(str(folder / onnx_file), threads) as runner:
        batch = runner.static_batch
        for file, shows, tilings in _inputs(out, cfg):
            h, w = read_image(out / file, cfg.channels).pixels.shape[:2]  # as oriented: the plan's size
            for tiling in tilings:
                engine = Engine(runner, cfg, tiling)
                stem = f"{Path(file).stem}-{tiling}"
                doc = window_list(engine.plan(h, w), batch)
                (out / f"{stem}.windows.json").write_text(json.dumps(doc) + "\n")
                done = restore_file(engine, Job(out / file, out / f"{stem}.expected.png"))
                if not done.ok:
                    raise NSRError(f"conformance vector {file}: {done.error}")
                vectors.append({"input": f"{FOLDER}/{file}", "format": shows, "tiling": tiling,
                                "windows": f"{FOLDER}/{stem}.windows.json",
                                "expected": f"{FOLDER}/{stem}.expected.png"})
    section = {"folder": FOLDER, "static_batch": batch, "engine": onnx_file, "vectors": vectors,
               "pass": "window lists equal; alpha equal; colour within one 8-bit level on at most 0.1% of values"}
    return section
