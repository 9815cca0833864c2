"""The ``nchwc`` conv form from a PyTorch model: ONNX Runtime's blocked layout, block size baked in.

No longer a shipped export form: ``model.onnx`` stays portable and the ONNX Runtime runner builds
this graph at load time for its own CPU (:mod:`nsr_deploy.runtimes.onnxruntime.specialise`). The bench still
builds it from torch, to compare the load-time specialisation with the export-time one. The graph
itself is written by the torch-free :mod:`nsr_deploy.runtimes.onnxruntime.nchwc_graph`.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.onnxruntime import nchwc_graph as ng
from nsr_deploy.runtimes.onnxruntime.nchwc_probe import DOMAIN, mlas_block_size  # noqa: F401 (re-exported)


def unsupported_reason(cfg, block: int) -> str | None:
    return ng.unsupported_reason(cfg.units, cfg.block_width, block)


def _numpy(t) -> np.ndarray:
    return t.detach().float().numpy().copy()


def static_weights(conv) -> ng.StaticConv:
    return ng.StaticConv(_numpy(conv.effective_weight()), _numpy(conv.bias))


def sparse_weights(conv) -> ng.SparseConv:
    """A :class:`SparseConv2d`'s weights, MLP rows reordered to (cardinal, group) as the graph reads them."""
    k, d = conv.groups, conv.cardinals
    order = np.arange(k * d).reshape(k, d).T.reshape(-1)
    lin = conv.mlp[0]
    return ng.SparseConv(_numpy(conv.effective_weight()), _numpy(conv.bias), _numpy(lin.weight)[order].T.copy(),
                         _numpy(lin.bias)[order].copy(), k, d)


def net_weights(loaded) -> ng.NetWeights:
    net, cfg = loaded.net, loaded.config
    as_conv = sparse_weights if cfg.sparse else static_weights
    blocks = tuple((as_conv(b.body[0]), as_conv(b.body[2])) for b in net.body[1:-1])
    skip = static_weights(net.skip[0]) if len(net.skip) else None
    return ng.NetWeights(cfg.channels, cfg.out_channels, cfg.scale, cfg.image_mean, static_weights(net.body[0]),
                         blocks, static_weights(net.body[-1]), skip)


def build_nchwc_onnx(loaded, patch_batch: int, block: int, opset: int = 17):
    """The patch network ``x, valid -> y`` for a fixed patch batch (any patch size), in NCHWc form."""
    why = unsupported_reason(loaded.config, block)
    if why:
        raise NSRError(f"conv form 'nchwc' is not available: {why}")
    return ng.build_blocked_network(net_weights(loaded), patch_batch, block, opset)


def build_nchwc_layer(conv, patch_batch: int, block: int, opset: int = 17):
    """One conv as a graph ``x [N, C, H, W] -> y`` in NCHWc form (for the bench's Figure 5 protocol):
    a :class:`SparseConv2d` with per-patch kernels, or a plain conv (the baseline's own NCHWc path)."""
    from onnx import TensorProto, helper

    from nsr_deploy.models.sparse_conv import SparseConv2d

    cin = conv.in_channels
    if cin % block:
        raise NSRError(f"conv form 'nchwc' needs input channels that are a multiple of {block}")
    g = ng.Graph()
    t = g.op("ReorderInput", ["x"], "reorder", DOMAIN)
    if isinstance(conv, SparseConv2d):
        cout = conv.patch_out_channels
        t = ng.sparse_conv(g, t, sparse_weights(conv), patch_batch, block, relu=False, add=None)
    else:
        cout = conv.out_channels
        coutp = ng.round_up(cout, block)
        t = ng.static_conv(g, t, ng.StaticConv(_numpy(conv.weight), _numpy(conv.bias)), block, out_pad=coutp)
    g.nodes.append(helper.make_node("ReorderOutput", [t], ["y"], domain=DOMAIN, channels=cout))
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [patch_batch, cin, "h", "w"])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [patch_batch, cout, "h", "w"])
    graph = helper.make_graph(g.nodes, "nsr_layer_nchwc", [x_info], [y_info], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])
