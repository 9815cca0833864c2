"""The sparse conv against a straightforward per-patch loop of Eq. 7 and Eq. 10."""

import pytest
import torch
import torch.nn.functional as F

from nsr_deploy.models.sparse_conv import SparseConv2d


def eq10_loop(conv: SparseConv2d, x: torch.Tensor) -> torch.Tensor:
    k, d, cout = conv.groups, conv.cardinals, conv.patch_out_channels
    w_mlp, b_mlp = conv.mlp[0].weight, conv.mlp[0].bias
    weight = conv.effective_weight().view(k, d, cout // d, *conv.effective_weight().shape[1:])
    bias = conv.bias.view(k, d, cout // d)
    outs = []
    for n in range(x.shape[0]):
        pooled = x[n].mean(dim=(1, 2))
        logits = (w_mlp @ pooled + b_mlp).view(k, d)
        gamma = torch.exp(logits - logits.max(0).values) / torch.exp(logits - logits.max(0).values).sum(0)
        w_parts, b_parts = [], []
        for j in range(d):
            w_parts.append(sum(gamma[i, j] * weight[i, j] for i in range(k)))
            b_parts.append(sum(gamma[i, j] * bias[i, j] for i in range(k)))
        w_hat, b_hat = torch.cat(w_parts), torch.cat(b_parts)
        outs.append(F.conv2d(x[n:n + 1], w_hat, b_hat, padding=conv.kernel_size // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("k,d,cin,cout", [(1, 1, 5, 6), (2, 4, 8, 8), (4, 16, 16, 32), (3, 2, 6, 4)])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_layer_matches_eq10_loop(k, d, cin, cout, weight_norm):
    torch.manual_seed(k * 100 + d)
    conv = SparseConv2d(cin, cout, 3, k, d, weight_norm=weight_norm)
    with torch.no_grad():
        conv.mlp[0].weight.mul_(5)  # sharp, varied softmax so mixing errors would show
        conv.bias.normal_()
        if weight_norm:
            conv.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(5, cin, 11, 9)
    with torch.no_grad():
        got, want = conv(x), eq10_loop(conv, x)
    assert got.shape == (5, cout, 11, 9)
    assert (got - want).abs().max().item() <= 1e-5


def test_softmax_is_over_groups_per_cardinal():
    conv = SparseConv2d(4, 8, 3, groups=3, cardinals=2)
    gamma = conv.sparsity(torch.randn(7, 4, 6, 6))
    assert gamma.shape == (7, 3, 2)
    torch.testing.assert_close(gamma.sum(1), torch.ones(7, 2))
    assert not torch.allclose(gamma.sum(2), torch.ones(7, 3))


def test_patches_are_independent():
    """Each batch item pools and mixes on its own: a patch's output ignores its neighbours."""
    torch.manual_seed(0)
    conv = SparseConv2d(6, 6, 3, groups=4, cardinals=3)
    x = torch.randn(4, 6, 10, 10)
    with torch.no_grad():
        full = conv(x)
        alone = torch.cat([conv(x[i:i + 1]) for i in range(4)])
    assert (full - alone).abs().max().item() <= 1e-6


def test_d_must_divide_outputs():
    with pytest.raises(ValueError):
        SparseConv2d(4, 6, 3, groups=2, cardinals=4)
