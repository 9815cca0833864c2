#!/usr/bin/env python3
"""The README's side-by-side crops: classic baseline | nsr-deploy | ground truth.

    python tools/make_figure.py                       # docs/sr-x2.png and docs/denoise-s25.png

The degraded input is made with nsr_deploy.degrade (the functions the bench uses); the restored
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

from nsr_deploy.checks.metrics import psnr  # noqa: E402
from nsr_deploy.degrade import add_noise, bicubic_down, bicubic_up, modcrop, to_grey  # noqa: E402
from nsr_deploy.exporters.pipeline import ExportOptions, export  # noqa: E402
from nsr_deploy.models.checkpoint import load_model  # noqa: E402
from nsr_deploy.runtimes import load  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# (model, image, crop top, left, size in output pixels)
FIGURES = [("sr-x2", DATA / "CSet5" / "butterfly.png", 60, 40, 120),
           ("denoise-s25", DATA / "BSD68" / "test006.png", 100, 180, 120)]


def panel(img: np.ndarray, label: str, zoom: int = 2) -> Image.Image:
    pil = Image.fromarray(img).convert("RGB")
    pil = pil.resize((pil.width * zoom, pil.height * zoom), Image.NEAREST)
    canvas = Image.new("RGB", (pil.width, pil.height + 18), "white")
    canvas.paste(pil, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def make(name: str, path: Path, top: int, left: int, size: int, out_dir: Path) -> Path:
    loaded = load_model(name)
    cfg = loaded.config
    clean = np.asarray(Image.open(path).convert("RGB" if cfg.channels == 3 else "L"))
    with tempfile.TemporaryDirectory() as tmp:
        export(loaded, Path(tmp) / "engine", "onnx", ExportOptions(conv_form="matmul", show_progress=False))
        with load(Path(tmp) / "engine", backend="onnxruntime") as engine:
            if cfg.scale > 1:
                gt = modcrop(clean, cfg.scale)
                degraded = bicubic_down(gt, cfg.scale)
                baseline, base_name = bicubic_up(degraded, cfg.scale), "bicubic"
                restored = engine.restore(degraded)
            else:
                gt = clean if clean.ndim == 2 else to_grey(clean)
                noisy = add_noise(gt, 25, np.random.default_rng(0))
                baseline, base_name = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8), "noisy (sigma 25)"
                restored = np.clip(np.rint(engine.restore(noisy) * 255), 0, 255).astype(np.uint8)
    shave = cfg.scale if cfg.scale > 1 else 0
    crop = (slice(top, top + size), slice(left, left + size))
    panels = [panel(baseline[crop], f"{base_name} {psnr(baseline, gt, shave):.2f} dB"),
              panel(restored[crop], f"nsr-deploy ({name}) {psnr(restored, gt, shave):.2f} dB"),
              panel(gt[crop], "ground truth")]
    fig = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for p in panels:
        fig.paste(p, (x, 0))
        x += p.width + 8
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.png"
    fig.save(target, optimize=True)
    return target


def main() -> int:
    for name, path, top, left, size in FIGURES:
        print(make(name, path, top, left, size, ROOT / "docs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
