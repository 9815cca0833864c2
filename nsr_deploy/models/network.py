"""The residual restoration networks: WDSR (Yu et al., BMVC 2019) and its NSR variant (``wdsr_nsr``).

    x = x - image_mean
    y = body(x) + skip(x)            # skip: 5x5 conv, only when in/out channels differ
    y = pixel_shuffle(y, scale) + image_mean
    body = head conv, B blocks ``x + conv2(relu(conv1(x)))``, tail conv

Parameter names follow the reference trainer, so its state dicts load once weight norm is folded.
``forward`` treats each batch item as one pooling patch; whole-image evaluation with the
reference's tiling lives in :mod:`nsr_deploy.models.reference`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nsr_deploy.core.config import KERNEL, SKIP_KERNEL, NSRConfig
from nsr_deploy.models.conv import Conv2d
from nsr_deploy.models.sparse_conv import SparseConv2d


class Block(nn.Module):
    def __init__(self, cfg: NSRConfig, weight_norm: bool):
        super().__init__()
        res_scale = 1.0 / math.sqrt(max(cfg.num_blocks, 1))  # the reference's init of conv2's g

        def conv(cin, cout, scale):
            if cfg.sparse:
                return SparseConv2d(cin, cout, KERNEL, cfg.groups, cfg.cardinals, weight_norm, scale)
            return Conv2d(cin, cout, KERNEL, weight_norm, scale)

        self.body = nn.Sequential(
            conv(cfg.units, cfg.block_width, 2.0), nn.ReLU(), conv(cfg.block_width, cfg.units, res_scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class NSRNet(nn.Module):
    def __init__(self, cfg: NSRConfig, weight_norm: bool = False):
        super().__init__()
        self.config = cfg
        layers = [Conv2d(cfg.channels, cfg.units, KERNEL, weight_norm)]
        layers += [Block(cfg, weight_norm) for _ in range(cfg.num_blocks)]
        layers.append(Conv2d(cfg.units, cfg.out_channels, KERNEL, weight_norm))
        self.body = nn.Sequential(*layers)
        skip = [Conv2d(cfg.channels, cfg.out_channels, SKIP_KERNEL, weight_norm)] if cfg.has_skip else []
        self.skip = nn.Sequential(*skip)

    def head_tail(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Body and skip on mean-free input, before the shuffle. ``valid`` masks the skip's input."""
        s = x if valid is None else x * valid
        return self.body(x) + (self.skip(s) if len(self.skip) else s)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.config.scale > 1:
            y = F.pixel_shuffle(y, self.config.scale)
        return y + self.config.image_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every batch item is one pooling patch (for a whole image: the image itself)."""
        return self.finish(self.head_tail(x - self.config.image_mean))

    def sparse_convs(self) -> list[SparseConv2d]:
        return [m for m in self.modules() if isinstance(m, SparseConv2d)]
