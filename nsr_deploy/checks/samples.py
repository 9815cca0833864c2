"""The bundled sample photos: the images gates, calibration and the bench use when given none.
Real photos, because the sparsity routing (patch pooling -> MLP -> softmax) only gets exercised by
real image statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsr_deploy.core.errors import NSRError


def sample_folder() -> Path:
    from nsr_deploy.assets import sample_paths

    paths = sample_paths()
    if not paths:
        raise NSRError("this installation has no bundled sample photos (nsr_deploy/assets/samples)")
    return paths[0].parent


def sample_images(channels: int, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 image)`` of the bundled samples, grey (Pillow luma) for 1-channel models."""
    from nsr_deploy.checks.task import read_images

    return read_images(sample_folder(), channels, limit)


def as_chw(images: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    from nsr_deploy.checks.task import to_chw

    return [(name, to_chw(img)) for name, img in images]


def default_sample(channels: int) -> tuple[np.ndarray, str]:
    """The first bundled sample photo as float32 CHW in [0, 1] (grey for 1-channel models)."""
    name, chw = as_chw(sample_images(channels, 1))[0]
    return chw, name
