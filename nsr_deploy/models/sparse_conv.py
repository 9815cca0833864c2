"""The NSR sparse convolution: Fan et al., "Neural Sparse Representation for Image Restoration",
NeurIPS 2020, Sections 3.2-3.3, Eq. 7 and Eq. 10.

Each batch item is one pooling patch. Per patch:
    gamma = softmax_k(MLP(mean_pool(x)))           Eq. 7, shape [k, d] (softmax over k per cardinal)
    W_hat = concat_j( sum_i gamma[i, j] W[i, j] )  Eq. 10, the same mixing for the bias
    y     = conv(x, W_hat) + b_hat                 zero padding at the patch border

The stored weight is laid out ``[k * out, in, kh, kw]`` with the group index outermost, i.e.
``view(k, d, out // d, in, kh, kw)``; that is the reference trainer's layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nsr_deploy.models.conv import Conv2d


class SparseConv2d(Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int,
                 cardinals: int, weight_norm: bool = False, weight_scale: float = 1.0):
        if out_channels % cardinals:
            raise ValueError(f"d={cardinals} must divide the output channels ({out_channels})")
        super().__init__(in_channels, groups * out_channels, kernel_size, weight_norm, weight_scale)
        self.groups = groups
        self.cardinals = cardinals
        self.patch_out_channels = out_channels
        self.mlp = nn.Sequential(nn.Linear(in_channels, groups * cardinals))

    def sparsity(self, x: torch.Tensor) -> torch.Tensor:
        """gamma of Eq. 10 for every patch: ``[N, k, d]``, summing to one over k."""
        logits = self.mlp(x.mean(dim=(2, 3)))
        return torch.softmax(logits.view(-1, self.groups, self.cardinals), dim=1)

    def mixed_kernels(self, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch kernel ``[N, out, in, kh, kw]`` and bias ``[N, out]`` (Eq. 10)."""
        n = gamma.shape[0]
        k, d = self.groups, self.cardinals
        w = self.effective_weight().reshape(k, d, -1)
        b = self.bias.reshape(k, d, -1)
        w_hat = torch.einsum("nkd,kdf->ndf", gamma, w)
        b_hat = torch.einsum("nkd,kdf->ndf", gamma, b)
        shape = (n, self.patch_out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        return w_hat.reshape(shape), b_hat.reshape(n, self.patch_out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        w_hat, b_hat = self.mixed_kernels(self.sparsity(x))
        # Fold the patches into channels: one grouped conv runs every patch with its own kernel.
        y = F.conv2d(x.reshape(1, n * c, h, w), w_hat.flatten(0, 1), b_hat.flatten(),
                     padding=self.padding, groups=n)
        return y.view(n, self.patch_out_channels, h, w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.groups}, d={self.cardinals}"
