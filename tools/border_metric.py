#!/usr/bin/env python3
"""The border metric of a bundled model on the test sets: its margin over the classic baseline on the
outer 4-pixel frame of the output and on the interior, per tiling (nsr_deploy.checks.frame).

    python tools/border_metric.py sr-x2          # CSet5, CSet14 (bicubic x2)
    python tools/border_metric.py denoise-s25    # BSD68 sigma 25
    python tools/border_metric.py jpeg-q10       # BSD68 and CSet14 at quality 10

A gap (interior margin minus frame margin) of a few dB is a visible fringe. ``cells`` is shown with
both borders: ``clamp`` (its default) and ``reflect`` (what the reference's tiles do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsr_deploy.bench.suites.quality import baseline, to_uint8  # noqa: E402
from nsr_deploy.checks.frame import border_gap  # noqa: E402
from nsr_deploy.checks.task import degrade, read_images, task_of  # noqa: E402
from nsr_deploy.models import load_model  # noqa: E402
from nsr_deploy.runtimes.engine import Engine  # noqa: E402
from nsr_deploy.runtimes.torch.runner import TorchRunner  # noqa: E402

SETS = {"sr": ("CSet5", "CSet14"), "noise": ("BSD68",), "jpeg": ("BSD68", "CSet14")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a bundled model name or a checkpoint")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, help="images per set (default all)")
    args = ap.parse_args(argv)

    loaded = load_model(args.model)
    cfg, task = loaded.config, task_of(loaded)
    runner = TorchRunner(args.model, threads=1, net=loaded.net)
    engines = {"reference": Engine(runner, cfg, "reference").activate(), "cells (clamp)": Engine(runner, cfg, "cells"),
               "cells (reflect)": Engine(runner, cfg, "cells", border="reflect")}
    print(f"{args.model}: {task.describe()}; margin over the baseline in dB, frame = outer 4 output pixels")
    for name in SETS[task.kind]:
        rng = np.random.default_rng(0)
        images = read_images(args.data / name, cfg.channels, args.limit)
        margins = {label: [] for label in engines}
        for _, clean in images:
            x, gt = degrade(clean, task, rng)
            base = baseline(x, gt, task)
            for label, engine in engines.items():
                margins[label].append(border_gap(to_uint8(engine.restore_chw(x)), base, gt))
        for label, rows in margins.items():
            frame, interior = np.mean(rows, axis=0)
            print(f"  {name:7s} {len(rows):3d} images  {label:16s} frame {frame:+6.2f}  interior {interior:+6.2f}"
                  f"  gap {interior - frame:5.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
