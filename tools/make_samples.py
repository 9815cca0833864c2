#!/usr/bin/env python3
"""Write the bundled sample images (nsr_deploy/assets/samples/) from held-out training photos.

    python tools/make_samples.py

Crops of the last photos of ../shared/data/CSun_Hays80 (held out by tools/train_default.py, never
from a test set). They serve the export parity gate, int8 calibration and the README's first
command, so the product needs nothing from ../shared.
"""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "CSun_Hays80"
OUT = ROOT / "nsr_deploy" / "assets" / "samples"
# (photo index from the end, top, left, height, width)
CROPS = [(1, 0.30, 0.35, 256, 256), (2, 0.45, 0.20, 224, 288), (3, 0.25, 0.50, 200, 240), (4, 0.5, 0.5, 120, 96)]


def main():
    photos = sorted(p for p in DATA.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (back, ty, tx, h, w) in enumerate(CROPS, 1):
        img = np.asarray(Image.open(photos[-back]).convert("RGB"))
        y0 = int((img.shape[0] - h) * ty)
        x0 = int((img.shape[1] - w) * tx)
        crop = img[y0:y0 + h, x0:x0 + w]
        path = OUT / f"sample-{i}.png"
        Image.fromarray(crop).save(path, optimize=True)
        print(f"{path.relative_to(ROOT)}  {w}x{h}  from {photos[-back].name}")


if __name__ == "__main__":
    main()
