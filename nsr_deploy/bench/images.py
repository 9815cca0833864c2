"""Images the bench measures on: the bundled sample photos (parity, the model suite's input) and the
benchmark sets under the data folder (quality). Real photos, because the sparsity routing (patch
pooling -> MLP -> softmax) only gets exercised by real image statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsr_deploy.errors import NSRError


def sample_folder() -> Path:
    from nsr_deploy.assets import sample_paths

    paths = sample_paths()
    if not paths:
        raise NSRError("this installation has no bundled sample photos (nsr_deploy/assets/samples)")
    return paths[0].parent


def sample_images(channels: int, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 image)`` of the bundled samples, grey (Pillow luma) for 1-channel models."""
    from nsr_deploy.exporters.task_quality import read_images

    return read_images(sample_folder(), channels, limit)


def as_chw(images: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    from nsr_deploy.exporters.task_quality import to_chw

    return [(name, to_chw(img)) for name, img in images]


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
    from nsr_deploy.exporters.task_quality import read_images

    return read_images(Path(data_dir) / name, channels, limit)
