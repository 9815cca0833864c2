"""The ``scaled-mix`` deploy form: the sparse conv (Fan et al., NeurIPS 2020, Eq. 7 and Eq. 10) written only
with ops ExecuTorch's XNNPACK partitioner delegates when height and width are dynamic.

XNNPACK takes no conv whose weights are computed at run time (the ``grouped`` form falls back), no
reshape with a symbolic size, and no slice of a dynamic tensor (the ``matmul`` form's im2col), so the
per-patch kernel is never built. By linearity of Eq. 10 in the kernels,

    conv(x, sum_i gamma_ij W_ij) + sum_i gamma_ij b_ij  =  sum_i gamma_ij conv(x, W_ij) + b_hat_j

and the graph is

    GlobalAveragePool (mean keepdim) -> MatMul + Add (the MLP) -> Softmax over k
    -> one constant MatMul spreading gamma to a per-channel scale [N, k*out, 1, 1]
    -> Conv with all k groups' constant kernels -> Mul by the scale -> constant 1x1 Conv summing the k groups
    -> Add the mixed bias (another constant MatMul of gamma)

Every reshape touches only ``[N, C]``-sized tensors, whose sizes are static. The spreading and summing
matrices are one-hot, so they add no rounding beyond the order of the k-term sum: the result equals
the reference within fp32 rounding. The cost is the ``dense-mix`` one (k convs' FLOPs), the price of
running fully inside XNNPACK. :class:`ShuffleConv` is the pixel shuffle as a one-hot transposed conv,
for the same reason (``pixel_shuffle``'s own reshapes are symbolic at dynamic sizes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nsr_deploy.models.sparse_conv import SparseConv2d


class ScaledMixConv(nn.Module):
    def __init__(self, conv: SparseConv2d):
        super().__init__()
        k, d = conv.groups, conv.cardinals
        cin, cout, ks = conv.in_channels, conv.patch_out_channels, conv.kernel_size
        per = cout // d
        self.k, self.d, self.cin, self.cout, self.ks = k, d, cin, cout, ks
        with torch.no_grad():
            w = conv.effective_weight().detach().float()  # [k*cout, cin, ks, ks], channels ordered (i, j, o)
            b = conv.bias.detach().float().view(k, d, per)
            lin = conv.mlp[0]  # logits ordered (i, j), as the reference's view(k, d)
            self.register_buffer("mlp_weight", lin.weight.detach().float().t().contiguous())  # [cin, k*d]
            self.register_buffer("mlp_bias", lin.bias.detach().float().contiguous())
            self.register_buffer("all_weight", w.contiguous())
            # gamma (i, j) -> the scale of each of the k*cout channels (i, j, o): row (i, j) is one on its block
            spread = torch.eye(k * d).repeat_interleave(per, dim=1)  # [k*d, k*cout]
            self.register_buffer("spread", spread.contiguous())
            # bias_hat[n, (j, o)] = sum_i gamma[n, i, j] b[i, j, o]: row (i, j) holds b[i, j] at block j
            rows = torch.zeros(k, d, d, per)
            rows[:, torch.arange(d), torch.arange(d)] = b
            self.register_buffer("bias_rows", rows.reshape(k * d, cout).contiguous())
            # the k groups summed by a 1x1 conv: output o takes channel (i, o) of every group i
            self.register_buffer("group_sum", torch.eye(cout).repeat(1, k).reshape(cout, k * cout, 1, 1).contiguous())

    def gamma(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 7: softmax over k of the pooled MLP, ``[N, k*d]`` ordered (i, j)."""
        pooled = x.mean(dim=(2, 3), keepdim=True).reshape(x.shape[0], self.cin)
        logits = torch.matmul(pooled, self.mlp_weight) + self.mlp_bias
        # softmax runs on the last axis only in XNNPACK: bring k there and back
        g = torch.softmax(logits.reshape(-1, self.k, self.d).permute(0, 2, 1), dim=-1)
        return g.permute(0, 2, 1).reshape(-1, self.k * self.d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gamma(x)
        n = x.shape[0]
        scale = torch.matmul(g, self.spread).reshape(n, self.k * self.cout, 1, 1)
        bias = torch.matmul(g, self.bias_rows).reshape(n, self.cout, 1, 1)
        y_all = F.conv2d(x, self.all_weight, None, padding=self.ks // 2)  # every group's kernels
        return F.conv2d(y_all * scale, self.group_sum) + bias


class ShuffleConv(nn.Module):
    """``pixel_shuffle(y, s)`` as a transposed conv with stride ``s`` and one-hot kernels (exact)."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.scale = scale
        w = torch.zeros(channels * scale * scale, channels, scale, scale)
        for c in range(channels):
            for dy in range(scale):
                for dx in range(scale):
                    w[(c * scale + dy) * scale + dx, c, dy, dx] = 1.0
        self.register_buffer("weight", w)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y, self.weight, stride=self.scale)
