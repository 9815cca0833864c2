"""One conformance test for every backend of the capability table: a tiny sparse model (DEVICE_TINY, widths
that are multiples of every NCHWc block), exported once for each backend's target in the form ``auto`` gives
it, restores real photos as the PyTorch reference's whole-image evaluation does (the trainer's overlapping,
reflect-padded patches, blended; :mod:`nsr_deploy.models.reference`), within the documented fp32
tolerance; its 8-bit output (on the crop) within docs/contract.md's pass rule. The photos: CSet5 butterfly (256 x 256)
and CSet14 face (276 x 276), both cut into patches, and a crop below four patches, run as one patch.

A backend that cannot run here is skipped with the reason its runtime gives; none is emulated.
"""

import numpy as np
import pytest
import torch

from conftest import DEVICE_PHOTOS, agreement, photo_rgb, within_contract_tolerance
from nsr_deploy.checks.verdicts import tolerance_of
from nsr_deploy.core.capabilities import BACKEND_TABLE, EXPORTED_BACKENDS, REFERENCE_BACKEND, TARGET_OF_BACKEND
from nsr_deploy.models.checkpoint import save_native
from nsr_deploy.models.reference import reference_forward
from nsr_deploy.runtimes import backend_unavailable, load
from nsr_deploy.runtimes.engine import to_uint8

# every backend of the table: the exported ones run their target's files, the reference runs the checkpoint
BACKENDS = tuple(b.name for b in BACKEND_TABLE)
assert set(EXPORTED_BACKENDS) | {REFERENCE_BACKEND} == set(BACKENDS)
CROP = (slice(40, 190), slice(20, 240))  # 150 x 220 of the butterfly: a side below 4 patches, one patch


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """name -> uint8 RGB photo (the test skips where the shared images are absent)."""
    butterfly, face = (photo_rgb(p) for p in DEVICE_PHOTOS)
    return {"butterfly": butterfly, "face": face, "butterfly-crop": np.ascontiguousarray(butterfly[CROP])}


@pytest.fixture(scope="module")
def expected(device_exports, photos) -> dict[str, np.ndarray]:
    """name -> the reference's whole-image evaluation of the photo, float32 HWC in [0, 1], computed once."""
    net = device_exports.loaded.net
    out = {}
    for name, image in photos.items():
        x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
        out[name] = reference_forward(net, x)[0].permute(1, 2, 0).numpy()
    return out


def _model_path(backend: str, device_exports, tmp_path_factory):
    if backend == REFERENCE_BACKEND:  # the torch runner takes the checkpoint itself
        checkpoint, _ = save_native(device_exports.loaded.net, tmp_path_factory.mktemp("conformance") / "tiny")
        return checkpoint
    return device_exports(TARGET_OF_BACKEND[backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_restores_real_photos_as_the_reference_does(backend, device_exports, photos, expected,
                                                            tmp_path_factory):
    why = backend_unavailable(backend)
    if why is not None:
        pytest.skip(f"{backend} cannot run here: {why}")
    path = _model_path(backend, device_exports, tmp_path_factory)
    limit = tolerance_of("fp32")
    with load(path, backend=backend, threads=1) as engine:
        assert engine.runner.backend == backend and engine.config == device_exports.loaded.config
        for name, image in photos.items():
            want = expected[name]
            got = engine.restore(image.astype(np.float32) / 255)
            assert engine.last_stats["tiling"] == "reference"
            assert (engine.last_stats["windows"] == 1) == (name == "butterfly-crop"), (name, engine.last_stats)
            assert got.shape == want.shape == (image.shape[0] * 2, image.shape[1] * 2, 3), name
            worst = float(np.abs(got - want).max())
            assert worst <= limit, f"{backend} on {name}: max abs {worst:.2e} from the reference (limit {limit:g})"
            if name == "butterfly-crop":  # the 8-bit path once: the same engine call, converted at both ends
                eight_bit = engine.restore(image)
                assert eight_bit.dtype == np.uint8 and within_contract_tolerance(eight_bit, to_uint8(want.copy()))


@pytest.mark.parametrize("backend", EXPORTED_BACKENDS)  # the reference runner against itself proves nothing
def test_backend_restores_real_photos_in_cells_as_the_reference_runner_does(backend, device_exports, photos,
                                                                            tmp_path_factory):
    """The cell grid (tiling ``cells``: the host's fixed-size, overlap-free windows) through each backend
    against the same grid through the PyTorch reference runner, one 8-bit level on >= 99% of values."""
    why = backend_unavailable(backend)
    if why is not None:
        pytest.skip(f"{backend} cannot run here: {why}")
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.torch.runner import TorchRunner

    loaded = device_exports.loaded
    reference = Engine(TorchRunner("tiny", 1, net=loaded.net), loaded.config, "cells")
    path = _model_path(backend, device_exports, tmp_path_factory)
    with load(path, backend=backend, threads=1, tiling="cells") as engine:
        assert engine.runner.backend == backend
        for name in ("butterfly", "face"):
            image = photos[name].astype(np.float32) / 255
            same, worst = agreement(to_uint8(engine.restore(image)), to_uint8(reference.restore(image)))
            assert same >= 0.99 and worst <= 1, (backend, name, same, worst)
