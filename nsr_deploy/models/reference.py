"""Whole-image evaluation exactly as the reference trainer runs it: the ground truth that every
exported engine is compared to.

Sparse models pool per patch: an image whose sides are both at least ``4 * patch_size`` is cut
into the reference's overlapping, reflect-padded patches (:mod:`nsr_deploy.core.geometry`);
the body runs per patch, patch centres are blended, and the skip branch runs on the whole image.
Smaller images, and every dense model, run as one patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nsr_deploy.core.geometry import REFERENCE_PAD, reference_windows, uses_whole_image
from nsr_deploy.models.network import NSRNet


def extract_patches(x: torch.Tensor, windows, patch: int, pad: int = REFERENCE_PAD) -> torch.Tensor:
    """Patches ``[B * len(windows), C, patch, patch]`` (batch-major) from the reflect-padded image."""
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    crops = [xp[:, :, w.y + pad:w.y + pad + patch, w.x + pad:w.x + pad + patch] for w in windows]
    return torch.stack(crops, dim=1).flatten(0, 1)


def blend_patches(y: torch.Tensor, windows, out_hw, pad: int = REFERENCE_PAD, scale: int = 1) -> torch.Tensor:
    """Weighted average of patch centres: ``y`` is ``[B * len(windows), C, P*scale, P*scale]``."""
    h, w = out_hw
    n = len(windows)
    y = y.view(-1, n, *y.shape[1:])
    r = pad * scale
    core = y[..., r:y.shape[-2] - r, r:y.shape[-1] - r]
    out = y.new_zeros(y.shape[0], y.shape[2], h, w)
    weight = y.new_zeros(1, 1, h, w)
    ph, pw = core.shape[-2:]
    for i, win in enumerate(windows):
        oy, ox = win.y * scale + r, win.x * scale + r
        out[:, :, oy:oy + ph, ox:ox + pw] += win.weight * core[:, i]
        weight[:, :, oy:oy + ph, ox:ox + pw] += win.weight
    return out / weight


@torch.no_grad()
def reference_forward(net: NSRNet, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Restore a batch of whole images ``[B, C, h, w]`` in [0, 1] as the reference trainer would."""
    cfg = net.config
    h, w = x.shape[-2:]
    xm = x - cfg.image_mean
    if not cfg.sparse or uses_whole_image(h, w, cfg.patch_size):
        return net.finish(net.head_tail(xm))
    windows = reference_windows(h, w, cfg.patch_size)
    patches = extract_patches(xm, windows, cfg.patch_size)
    body = torch.cat([net.body(p) for p in patches.split(chunk)])
    y = blend_patches(body, windows, (h, w))
    skip = net.skip(xm) if len(net.skip) else xm
    return net.finish(y + skip)
