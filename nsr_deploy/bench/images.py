"""Images the bench measures on: the bundled sample photos (the model suite's input; see
:mod:`nsr_deploy.checks.samples`) and the benchmark sets under the data folder (quality).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsr_deploy.checks.samples import as_chw, sample_images


def bench_input(channels: int, height: int, width: int) -> np.ndarray:
    """The model suite's input: the first sample photo as float32 CHW, cropped to ``height`` x ``width``
    (mirrored past its edges when the size asked for is larger)."""
    _, img = sample_images(channels, 1)[0]
    chw = as_chw([("", img)])[0][1]
    h, w = chw.shape[1:]
    if height > h or width > w:
        chw = np.pad(chw, ((0, 0), (0, max(0, height - h)), (0, max(0, width - w))), mode="symmetric")
    return np.ascontiguousarray(chw[:, :height, :width])


def dataset_images(data_dir: Path, name: str, channels: int, limit: int | None) -> list[tuple[str, np.ndarray]]:
    from nsr_deploy.checks.task import read_images

    return read_images(Path(data_dir) / name, channels, limit)
