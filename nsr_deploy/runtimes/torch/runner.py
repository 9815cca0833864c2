"""PyTorch reference runner: runs a checkpoint (reference or native) through the reference layer.

The only runner that needs torch; it is imported only when asked for.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner

PROBE_SIDE = 32
# an image model maps [0, 1] in to about [0, 1] out; a restored image is clipped to it. Weights that are
# finite but absurd (a scale x 1e8) send nearly every value far outside: the file restores black or white.
PROBE_RANGE = (-0.5, 1.5)
PROBE_MIN_INSIDE = 0.5


def probe_input(channels: int) -> np.ndarray:
    """A smooth test card in [0.1, 0.9]: gradients a real restoration model passes through almost as is."""
    yy, xx = np.mgrid[0:PROBE_SIDE, 0:PROBE_SIDE] / (PROBE_SIDE - 1)
    planes = [yy, xx, (yy + xx) / 2][:channels] if channels <= 3 else [yy] * channels
    return (np.stack(planes)[None] * 0.8 + 0.1).astype(np.float32)


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
        self._sanity_check()

    def _sanity_check(self) -> None:
        """The check export's parity gate gives engines, for the one path without a gate: a model whose
        output on a test card is non-finite or mostly far outside the image range is refused."""
        x = probe_input(self.config.channels)
        # the eager reference, not a subclass's compiled path (not built yet when this runs)
        y = TorchRunner._infer(self, x, np.ones((1, 1, PROBE_SIDE, PROBE_SIDE), np.float32))
        low, high = PROBE_RANGE
        finite = bool(np.isfinite(y).all())
        inside = float(np.mean((y > low) & (y < high))) if finite else 0.0
        if inside < PROBE_MIN_INSIDE:
            what = f"outside {low}..{high} for {1 - inside:.0%} of values" if finite else "not finite"
            raise NSRError(f"{self.path}: the model's output on a test card is {what} (max |y| "
                           f"{float(np.nanmax(np.abs(y))):.3g}): its weights are not those of a working image "
                           f"model; refusing to restore with it")

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xm = torch.from_numpy(x) - self.config.image_mean
            y = self.net.finish(self.net.head_tail(xm, torch.from_numpy(valid)))
        return y.numpy()
