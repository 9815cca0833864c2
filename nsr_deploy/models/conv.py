"""Plain convolution with optional (old-style) weight normalisation, in the reference key layout.

Salimans & Kingma, "Weight Normalization" (2016): ``w = g * v / ||v||``, the norm taken over every
dim but the output channel. With ``weight_norm=True`` the parameters are ``weight_g``
``[out, 1, 1, 1]`` and ``weight_v`` (what the reference trainer saves and what our trainer uses);
otherwise a single folded ``weight`` (what every deployed model carries).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over all dims but the first."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return v * (g.view(-1, *([1] * (v.dim() - 1))) / norm)


class Conv2d(nn.Module):
    """Square-kernel, same-size (zero padded) convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 weight_norm: bool = False, weight_scale: float = 1.0):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.weight_norm = weight_norm
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        v = torch.empty(shape)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # torch's Conv2d default
        if weight_norm:
            # As the reference trainer initialises: g sets each output channel's norm.
            self.weight_v = nn.Parameter(v)
            self.weight_g = nn.Parameter(torch.full((out_channels, 1, 1, 1), float(weight_scale)))
        else:
            self.weight = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def effective_weight(self) -> torch.Tensor:
        if self.weight_norm:
            return fold_weight_norm(self.weight_g, self.weight_v)
        return self.weight

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        wn = ", weight_norm" if self.weight_norm else ""
        return f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}{wn}"
