"""PyTorch reference runner: runs a checkpoint (reference or native) through the reference layer.

The only runner that needs torch; it is imported only when asked for.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.errors import BackendUnavailable
from nsr_deploy.runtimes.base import Runner


def unavailable() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install 'nsr-deploy[export]')"
    return None


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, path: str, threads: int | None = None, image_mean: float | None = None,
                 patch_size: int | None = None, net=None):
        super().__init__(path, threads)
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        if net is None:
            from nsr_deploy.models.checkpoint import load_model

            net = load_model(path, image_mean, patch_size).net
        self.net = net.eval()
        self.config = net.config

    def _activate(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xm = torch.from_numpy(x) - self.config.image_mean
            y = self.net.finish(self.net.head_tail(xm, torch.from_numpy(valid)))
        return y.numpy()
