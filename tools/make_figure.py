#!/usr/bin/env python3
"""The README's side-by-side crops: classic baseline | nsr-deploy | ground truth, and one border crop
(the top-left corner of a tiled image: reference tiling | cells tiling | ground truth).

    python tools/make_figure.py       # docs/sr-x2.png, docs/denoise-s25.png, docs/jpeg-q10.png, docs/sr-x2-border.png

The degraded input is made with nsr_deploy.core.degrade (the functions the bench uses); the restored
image comes from the bundled model exported to ONNX and run through nsr_deploy.runtimes, i.e. the
path a user's app takes. Crops are enlarged 2x (nearest) so the pixels are visible.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsr_deploy.bench.suites.quality import baseline as classic_baseline  # noqa: E402
from nsr_deploy.bench.suites.quality import to_uint8  # noqa: E402
from nsr_deploy.checks.frame import frame_and_interior_psnr  # noqa: E402
from nsr_deploy.checks.metrics import psnr  # noqa: E402
from nsr_deploy.checks.task import degrade, task_of  # noqa: E402
from nsr_deploy.exporters.pipeline import ExportOptions, export  # noqa: E402
from nsr_deploy.models.checkpoint import load_model  # noqa: E402
from nsr_deploy.runtimes import load  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# (model, image, crop top, left, size in output pixels)
FIGURES = [("sr-x2", DATA / "CSet5" / "butterfly.png", 60, 40, 120),
           ("denoise-s25", DATA / "BSD68" / "test006.png", 100, 180, 120),
           ("jpeg-q10", DATA / "BSD68" / "test006.png", 100, 180, 120)]
BORDER = ("sr-x2", DATA / "CSet14" / "barbara.png", 48)  # a corner crop of an image the tiling cuts


def panel(img: np.ndarray, label: str, zoom: int = 2) -> Image.Image:
    pil = Image.fromarray(img).convert("RGB")
    pil = pil.resize((pil.width * zoom, pil.height * zoom), Image.NEAREST)
    canvas = Image.new("RGB", (pil.width, pil.height + 18), "white")
    canvas.paste(pil, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def restore_all(name: str, path: Path, tilings: tuple[str, ...]):
    """(ground truth, classic baseline and its name, {tiling: restored}) through the ONNX Runtime export."""
    loaded = load_model(name)
    task = task_of(loaded)
    clean = np.asarray(Image.open(path).convert("RGB" if loaded.config.channels == 3 else "L"))
    x, gt = degrade(clean, task, np.random.default_rng(0))
    base_name = ("bicubic" if task.kind == "sr" else f"noisy (sigma {task.sigma:g})" if task.kind == "noise"
                 else f"JPEG q{task.quality}")
    with tempfile.TemporaryDirectory() as tmp:
        export(loaded, Path(tmp) / "engine", "onnx", ExportOptions(conv_form="matmul", show_progress=False))
        restored = {}
        for tiling in tilings:
            with load(Path(tmp) / "engine", backend="onnxruntime", tiling=tiling) as engine:
                restored[tiling] = to_uint8(engine.restore_chw(x))
    return gt, classic_baseline(x, gt, task), base_name, restored, (loaded.config.scale if task.kind == "sr" else 0)


def save(panels: list[Image.Image], target: Path) -> Path:
    fig = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for p in panels:
        fig.paste(p, (x, 0))
        x += p.width + 8
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.save(target, optimize=True)
    return target


def make(name: str, path: Path, top: int, left: int, size: int, out_dir: Path) -> Path:
    gt, baseline, base_name, restored, shave = restore_all(name, path, ("reference",))
    out = restored["reference"]
    crop = (slice(top, top + size), slice(left, left + size))
    return save([panel(baseline[crop], f"{base_name} {psnr(baseline, gt, shave):.2f} dB"),
                 panel(out[crop], f"nsr-deploy ({name}) {psnr(out, gt, shave):.2f} dB"),
                 panel(gt[crop], "ground truth")], out_dir / f"{name}.png")


def make_border(name: str, path: Path, size: int, out_dir: Path) -> Path:
    """The top-left corner, enlarged 4x; labels give the PSNR of the outer 4-pixel frame."""
    gt, _, _, restored, _ = restore_all(name, path, ("reference", "cells"))
    crop = (slice(0, size), slice(0, size))
    panels = [panel(out[crop], f"{tiling} tiling: frame {frame_and_interior_psnr(out, gt)[0]:.2f} dB", zoom=4)
              for tiling, out in restored.items()]
    return save([*panels, panel(gt[crop], "ground truth", zoom=4)], out_dir / f"{name}-border.png")


def main() -> int:
    for name, path, top, left, size in FIGURES:
        print(make(name, path, top, left, size, ROOT / "docs"))
    print(make_border(*BORDER, ROOT / "docs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
