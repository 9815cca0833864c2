import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
