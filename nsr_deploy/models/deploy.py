"""Deploy rewrite: every sparse conv becomes a traceable module whose graph is

    ReduceMean (patch pooling) -> MatMul + Add (the MLP) -> Softmax over k
    -> one batched MatMul  gamma [N, d, 1, k] @ stacked kernels [d, k, F]   (Eq. 10, bias included)
    -> the per-patch convolution in one of three forms

The stacked kernels are arranged once, at export time, in the layout the chosen conv form reads,
so a call runs nothing but the mixing and the convolution. Forms:

``grouped``   patches folded into channels, one Conv with runtime weights and group = batch.
              ONNX ``Conv.group`` is an attribute, so the patch batch is fixed per engine.
``matmul``    im2col as nine shifted slices, then one batched MatMul per patch. Dynamic batch/size.
``dense-mix`` static convs for all k groups, then the gamma-weighted sum (exact by linearity;
              k times the FLOPs, static weights). Dynamic batch/size.
``scaled-mix`` the same sum written for ExecuTorch's XNNPACK delegate (:mod:`.deploy_xnnpack`): no reshape
              of a spatial tensor, pixel shuffle as a transposed conv. Fixed batch, dynamic size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nsr_deploy.core.capabilities import DEPLOY_FORMS as CONV_FORMS
from nsr_deploy.core.capabilities import EXECUTORCH_FORM, STATIC_BATCH_FORMS
from nsr_deploy.models.conv import Conv2d
from nsr_deploy.models.network import NSRNet
from nsr_deploy.models.sparse_conv import SparseConv2d


class DeploySparseConv(nn.Module):
    def __init__(self, conv: SparseConv2d, form: str, patch_batch: int | None = None):
        super().__init__()
        if form not in CONV_FORMS:
            raise ValueError(f"unknown conv form {form!r}")
        if form in STATIC_BATCH_FORMS and not patch_batch:
            raise ValueError(f"conv form {form!r} needs a fixed patch batch")
        k, d = conv.groups, conv.cardinals
        cin, cout, ks = conv.in_channels, conv.patch_out_channels, conv.kernel_size
        self.form, self.k, self.d, self.cin, self.cout, self.ks = form, k, d, cin, cout, ks
        self.patch_batch = patch_batch
        with torch.no_grad():
            w = conv.effective_weight().detach().float()  # [k*cout, cin, ks, ks]
            b = conv.bias.detach().float()
            lin = conv.mlp[0]
            # MLP rows reordered from (k, d) to (d, k): logits come out as [N, d, k], no transpose.
            order = torch.arange(k * d).view(k, d).t().reshape(-1)
            self.register_buffer("mlp_weight", lin.weight.detach()[order].t().contiguous())
            self.register_buffer("mlp_bias", lin.bias.detach()[order].contiguous())
            w6 = w.view(k, d, cout // d, cin, ks, ks)
            if form == "matmul":  # rows of the im2col matrix are ordered (dy, dx, cin)
                w6 = w6.permute(0, 1, 2, 4, 5, 3)
            rows = torch.cat([w6.reshape(k, d, cout // d, -1), b.view(k, d, cout // d, 1)], dim=3)
            # [d, k, (cout/d) * (cin*ks*ks + 1)]: one row per (cardinal, group), bias last per channel
            self.register_buffer("stacked", rows.permute(1, 0, 2, 3).reshape(d, k, -1).contiguous())
            if form == "dense-mix":
                self.register_buffer("all_weight", w.contiguous())
                self.register_buffer("bias_stacked", b.view(k, d, cout // d).permute(1, 0, 2).contiguous())

    def gamma(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over k of the pooled MLP: ``[N, d, k]``."""
        logits = torch.matmul(x.mean(dim=(2, 3)), self.mlp_weight) + self.mlp_bias
        return torch.softmax(logits.reshape(-1, self.d, self.k), dim=-1)

    def mixed(self, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch kernels ``[N, cout, cin*ks*ks]`` and biases ``[N, cout]``: one batched MatMul."""
        rows = torch.matmul(gamma.unsqueeze(2), self.stacked)  # [N, d, 1, F]
        rows = rows.reshape(-1, self.cout, self.cin * self.ks * self.ks + 1)
        return rows[:, :, :-1], rows[:, :, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma(x)
        if self.form == "dense-mix":
            return self._dense_mix(x, gamma)
        w, b = self.mixed(gamma)
        if self.form == "grouped":
            return self._grouped(x, w, b)
        return self._matmul(x, w, b)

    def _grouped(self, x, w, b):
        n, ks = self.patch_batch, self.ks
        h, wd = x.shape[2], x.shape[3]
        y = F.conv2d(x.reshape(1, n * self.cin, h, wd), w.reshape(n * self.cout, self.cin, ks, ks),
                     b.reshape(n * self.cout), padding=ks // 2, groups=n)
        return y.reshape(n, self.cout, h, wd)

    def _matmul(self, x, w, b):
        p = self.ks // 2
        h, wd = x.shape[2], x.shape[3]
        xp = F.pad(x, (p, p, p, p))
        hp, wp = xp.shape[2], xp.shape[3]
        taps = [xp[:, :, dy:hp - (self.ks - 1 - dy), dx:wp - (self.ks - 1 - dx)]
                for dy in range(self.ks) for dx in range(self.ks)]
        cols = torch.cat(taps, dim=1).flatten(2)  # [N, ks*ks*cin, h*w]
        y = torch.matmul(w, cols) + b.unsqueeze(2)
        return y.reshape(x.shape[0], self.cout, h, wd)

    def _dense_mix(self, x, gamma):
        n, h, wd = x.shape[0], x.shape[2], x.shape[3]
        y_all = F.conv2d(x, self.all_weight, None, padding=self.ks // 2)  # all k groups
        y_all = y_all.reshape(n, self.k, self.d, self.cout // self.d, h * wd)
        g = gamma.transpose(1, 2).reshape(n, self.k, self.d, 1, 1)
        bias = torch.matmul(gamma.unsqueeze(2), self.bias_stacked).reshape(n, self.cout, 1)
        y = (y_all * g).sum(dim=1).reshape(n, self.cout, h * wd) + bias
        return y.reshape(n, self.cout, h, wd)


class FoldedConv(nn.Module):
    """A plain conv with constant (weight-norm folded) weights."""

    def __init__(self, conv: Conv2d):
        super().__init__()
        self.padding = conv.padding
        self.register_buffer("weight", conv.effective_weight().detach().float().contiguous())
        self.register_buffer("bias", conv.bias.detach().float().contiguous())

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


def _rewrite(module: nn.Module, form: str, patch_batch: int | None) -> nn.Module:
    if isinstance(module, SparseConv2d):
        if form == EXECUTORCH_FORM:
            from nsr_deploy.models.deploy_xnnpack import ScaledMixConv

            return ScaledMixConv(module)
        return DeploySparseConv(module, form, patch_batch)
    if isinstance(module, Conv2d):
        return FoldedConv(module)
    for name, child in module.named_children():
        setattr(module, name, _rewrite(child, form, patch_batch))
    return module


class DeployNet(nn.Module):
    """The exported patch network.

    Inputs: ``x`` ``[N, C, h, w]`` in [0, 1], each item one pooling patch; ``valid`` ``[N, 1, h, w]``,
    1 on image pixels and 0 on padding added around the image (the skip conv sees zeros there, as it
    does on the reference's whole image). Output ``[N, C, h*s, w*s]``.
    """

    def __init__(self, net: NSRNet, form: str = "matmul", patch_batch: int | None = None):
        super().__init__()
        import copy

        self.config = net.config
        self.form = form
        self.patch_batch = patch_batch
        src = copy.deepcopy(net).eval()
        self.body = _rewrite(src.body, form, patch_batch)
        self.skip = _rewrite(src.skip, form, patch_batch)
        self.shuffle = None
        if form == EXECUTORCH_FORM and self.config.scale > 1:
            from nsr_deploy.models.deploy_xnnpack import ShuffleConv

            self.shuffle = ShuffleConv(self.config.channels, self.config.scale)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        xm = x - cfg.image_mean
        s = xm * valid
        y = self.body(xm) + (self.skip(s) if len(self.skip) else s)
        if self.shuffle is not None:
            y = self.shuffle(y)
        elif cfg.scale > 1:
            y = F.pixel_shuffle(y, cfg.scale)
        return y + cfg.image_mean
