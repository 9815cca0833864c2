import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsr_deploy.core.config import NSRConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NSR_DATA", ROOT.parent / "shared" / "data"))


def decisive_net(cfg, seed: int = 0, bias_std: float = 0.0):
    """A random NSRNet (eval mode) whose MLP weights are wide, so that every patch mixes its k kernels
    differently: parity tests then see the routing, not a near-uniform average."""
    import torch

    from nsr_deploy.models.network import NSRNet

    torch.manual_seed(seed)
    net = NSRNet(cfg).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "mlp" in name:
                p.normal_(0, 3.0)
            elif bias_std and name.endswith("bias"):
                p.normal_(0, bias_std)
    return net


# patch 24: the smallest with a reference stride above 4; images tile from 96 x 96 on
TINY_TILED = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=16, groups=2, cardinals=4,
                       patch_size=24)


def export_tiny_tiled(root: Path, form: str, batch, target: str = "onnx") -> Path:
    """A tiny sparse x2 colour model exported with conformance vectors into ``root/<form>-<batch>``."""
    from nsr_deploy.exporters.pipeline import ExportOptions, export
    from nsr_deploy.models.checkpoint import LoadedModel

    loaded = LoadedModel(decisive_net(TINY_TILED, 3, bias_std=0.05), "tiny", "built", "0" * 64, "tiny")
    folder = root / f"{form}-{batch}"
    export(loaded, folder, target, ExportOptions(conv_form=form, patch_batch=batch, show_progress=False,
                                                 conformance=True, threads=1))
    return folder


@pytest.fixture(scope="session")
def contract_exports(tmp_path_factory) -> dict:
    """Exports with conformance vectors for the examples' tests: a tiny fixed-batch one (batch filling)
    and the bundled sr-x2 with a dynamic batch (one whole image is one call)."""
    from nsr_deploy.exporters.pipeline import ExportOptions, export
    from nsr_deploy.models import load_model

    root = tmp_path_factory.mktemp("contract-exports")
    export(load_model("sr-x2"), root / "sr-x2", "onnx", ExportOptions(conv_form="matmul", patch_batch=None,
                                                                         show_progress=False, conformance=True))
    return {"tiny-static": export_tiny_tiled(root, "grouped", 4), "sr-x2": root / "sr-x2"}


def within_contract_tolerance(got: np.ndarray, expected: np.ndarray) -> bool:
    """docs/contract.md's pass rule for other implementations: at most one 8-bit level, on at most 0.1%
    of the values (engines round floats differently)."""
    if got.shape != expected.shape:
        return False
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    return diff.max() <= 1 and np.count_nonzero(diff) <= 0.001 * diff.size


# two real photos the device targets' restore tests share: 256x256 and 276x276 (tiled by both tilings)
DEVICE_PHOTOS = (DATA / "CSet5" / "butterfly.png", DATA / "CSet14" / "face.png")
# the device targets' (ncnn, ExecuTorch) tiny sparse model, exported at both precisions by their tests
DEVICE_TINY = NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=16, groups=4, cardinals=8)


def device_tiny():
    from nsr_deploy.models.checkpoint import LoadedModel

    return LoadedModel(decisive_net(DEVICE_TINY, seed=5), "tiny", "built", "0" * 64, "tiny")


# how each target exports DEVICE_TINY for the tests: the form ``auto`` gives it (ncnn: its test's grouped
# form at a patch batch of 4); one thread, so that exports are deterministic and light on a shared CI box
DEVICE_EXPORT_OPTIONS = {"ncnn": {"conv_form": "grouped", "patch_batch": 4}}


def device_options(target: str, precision: str = "fp32", **kw):
    from nsr_deploy.exporters.pipeline import ExportOptions

    settings = {"conv_form": "auto", "precision": precision, "threads": 1, "show_progress": False,
                **DEVICE_EXPORT_OPTIONS.get(target, {}), **kw}
    return ExportOptions(**settings)


@pytest.fixture(scope="session")
def device_exports(tmp_path_factory):
    """``(target, precision) -> folder``: DEVICE_TINY exported with :func:`device_options`, each once per
    session (the conformance test and the targets' own tests share them)."""
    from nsr_deploy.exporters.pipeline import export

    root = tmp_path_factory.mktemp("device-exports")
    built: dict[tuple[str, str], Path] = {}
    loaded = device_tiny()

    def get(target: str, precision: str = "fp32") -> Path:
        if (target, precision) not in built:
            folder = root / f"{target}-{precision}"
            export(loaded, folder, target, device_options(target, precision))
            built[target, precision] = folder
        return built[target, precision]

    get.loaded = loaded
    return get


def photo_rgb(path: Path) -> np.ndarray:
    """A real photo as uint8 RGB; the test skips if the shared images are absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (real images live in ../shared/data, or NSR_DATA)")
    return np.asarray(Image.open(path).convert("RGB"))


def agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, int]:
    """Share of equal 8-bit values, and the largest difference in levels."""
    diff = np.abs(got.astype(int) - want.astype(int))
    return float((diff == 0).mean()), int(diff.max())


def data_image(folder: str, index: int = 0) -> np.ndarray:
    paths = sorted((DATA / folder).iterdir())
    return np.asarray(Image.open(paths[index]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test images missing: {DATA} (set NSR_DATA)")
    return DATA


@pytest.fixture(autouse=True, scope="session")
def _specialisation_cache(tmp_path_factory):
    """ONNX Runtime's load-time NCHWc models go to a test folder, not the user's ~/.cache."""
    old = os.environ.get("NSR_DEPLOY_CACHE")
    os.environ["NSR_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("nsr-cache"))
    yield
    if old is None:
        os.environ.pop("NSR_DEPLOY_CACHE", None)
    else:
        os.environ["NSR_DEPLOY_CACHE"] = old
