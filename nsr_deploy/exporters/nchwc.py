"""The ``nchwc`` conv form: the patch network written directly in ONNX Runtime's blocked layout.

ONNX Runtime runs static convolutions fastest through its NCHWc kernels (MLAS), but it only
rewrites a Conv into that form when the weights are constant, so a per-patch conv with runtime
weights falls back to the slower im2col path. Here every conv, the per-patch ones included, is an
``com.microsoft.nchwc`` Conv: the kernel mixing (Eq. 10, one batched MatMul as in the portable
forms) writes the blocked filter layout ``OIHWBiBo`` directly (its stacked kernels are pre-arranged at
export; only widths that do not nest with the block mix in plain layout and transpose), and the patches are
folded into conv groups (group = batch), so the sparse layer runs on the same kernels as its dense
twin. ReLU and the residual add are fused into the convs.

ONNX Runtime only: these are its internal ops, present on x86 builds whose MLAS has NCHWc kernels.
The block size (8 with AVX2, 16 with AVX-512) is baked into the filters; the runner checks it.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.errors import NSRError
from nsr_deploy.runtimes.nchwc_probe import DOMAIN, mlas_block_size  # noqa: F401 (re-exported)


def unsupported_reason(cfg, block: int) -> str | None:
    if block <= 1:
        return "this ONNX Runtime build has no NCHWc kernels"
    if cfg.units % block or cfg.block_width % block:
        return f"units ({cfg.units}) and block width ({cfg.block_width}) must be multiples of {block}"
    return None


def _blocked_filter(w: np.ndarray, block: int, in_pad: int | None = None, out_pad: int | None = None) -> np.ndarray:
    """OIHW -> OIHWBiBo (as a 4-D tensor, the layout MLAS's NCHWc conv reads), zero-padding channels."""
    o, i, kh, kw = w.shape
    o2, i2 = out_pad or o, in_pad or i
    full = np.zeros((o2, i2, kh, kw), np.float32)
    full[:o, :i] = w
    blocked = full.reshape(o2 // block, block, i2 // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    return np.ascontiguousarray(blocked).reshape(o2, i2, kh, kw)


def _round_up(n: int, block: int) -> int:
    return (n + block - 1) // block * block


class _Graph:
    """A tiny builder: unique names, initializers, nodes."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, value) -> str:
        name = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str | None = None, domain: str = "", **attrs) -> str:
        out = self.name(base or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], domain=domain or None, **attrs))
        return out


def _conv(g: _Graph, x: str, w: str, b: str, group: int = 1, ks: int = 3, relu: bool = False,
          add: str | None = None) -> str:
    inputs = [x, w, b] + ([add] if add else [])
    attrs = {"kernel_shape": [ks, ks], "pads": [ks // 2] * 4, "group": group}
    if relu:
        attrs["activation"] = "Relu"
    return g.op("Conv", inputs, "conv", DOMAIN, **attrs)


def _blocked_mixing(w: np.ndarray, k: int, d: int, block: int):
    """Stacked kernels whose mixing MatMul writes the blocked filter layout directly (no transpose).

    Returns ``(mode, factor, stacked)`` with ``stacked`` ``[O/B, rows, (I/B)*kh*kw*B*B]``, or None when
    the cardinal groups and the channel blocks do not nest. ``repeat``: each cardinal spans ``factor``
    whole blocks (gamma repeated per block). ``share``: ``factor`` cardinals share a block; the block's
    rows are (cardinal, group) pairs whose columns outside that cardinal's outputs are zero.
    """
    kc, cin, kh, kw = w.shape
    cout = kc // k
    per, nb = cout // d, cout // block
    if cout % block or cin % block:
        return None
    blk = w.reshape(k, nb, block, cin // block, block, kh, kw).transpose(0, 1, 3, 5, 6, 4, 2)  # [k,nb,ib,y,x,bi,bo]
    if per % block == 0:
        return "repeat", per // block, np.ascontiguousarray(blk.reshape(k, nb, -1).transpose(1, 0, 2))
    if block % per:
        return None
    share = block // per
    rows = np.zeros((nb, share, k) + blk.shape[2:], np.float32)
    for lane in range(share):
        own = slice(lane * per, (lane + 1) * per)  # this cardinal's outputs inside the block
        rows[:, lane, :, ..., own] = blk.transpose(1, 0, 2, 3, 4, 5, 6)[..., own]
    return "share", share, rows.reshape(nb, share * k, -1)


def _sparse_conv(g: _Graph, t: str, conv, n: int, block: int, relu: bool, add: str | None) -> str:
    """Pool -> MLP -> softmax over k -> mixing MatMul into blocked filters -> grouped NCHWc conv."""
    k, d = conv.groups, conv.cardinals
    cin, cout, ks = conv.in_channels, conv.patch_out_channels, conv.kernel_size
    w = conv.effective_weight().detach().float().numpy()
    b = conv.bias.detach().float().numpy()
    lin = conv.mlp[0]
    order = np.arange(k * d).reshape(k, d).T.reshape(-1)  # logits as [N, d, k]
    mlp_w = lin.weight.detach().float().numpy()[order].T.copy()
    mlp_b = lin.bias.detach().float().numpy()[order].copy()
    # pooling over the patch, straight on the blocked tensor ([N, C/B, 1, 1, B] is [N, C] in memory)
    pooled = g.op("GlobalAveragePool", [t], "pool", DOMAIN)
    pooled = g.op("Reshape", [pooled, g.const("shape", np.array([n, cin]))])
    logits = g.op("Add", [g.op("MatMul", [pooled, g.const("mlp_w", mlp_w)]), g.const("mlp_b", mlp_b)])
    gamma = g.op("Softmax", [g.op("Reshape", [logits, g.const("shape", np.array([n, d, 1, k]))])], axis=-1)
    per = cout // d
    bias_stack = b.reshape(k, d, per).transpose(1, 0, 2).copy()  # [d, k, per]
    bias = g.op("MatMul", [gamma, g.const("bias_stack", bias_stack)])  # [N, d, 1, per]
    mixing = _blocked_mixing(w, k, d, block)
    if mixing is not None:
        mode, factor, stacked = mixing
        nb = cout // block
        if mode == "repeat" and factor > 1:
            gamma = g.op("Expand", [gamma, g.const("shape", np.array([n, d, factor, k]))])
        rows = g.op("Reshape", [gamma, g.const("shape", np.array([n, nb, 1, stacked.shape[1]]))])
        kern = g.op("MatMul", [rows, g.const("stacked", stacked)])  # [N, O/B, 1, (I/B)*kh*kw*B*B]
        coutp = cout
        bias = g.op("Reshape", [bias, g.const("shape", np.array([n * cout]))])
    else:  # widths that do not nest with the block: mix in plain layout, pad, then transpose
        stacked = w.reshape(k, d, per, -1).transpose(1, 0, 2, 3).reshape(d, k, -1)
        kern = g.op("MatMul", [gamma, g.const("stacked", np.ascontiguousarray(stacked))])  # [N, d, 1, per*cin*kk]
        kern = g.op("Reshape", [kern, g.const("shape", np.array([n, cout, cin * ks * ks]))])
        coutp = _round_up(cout, block)
        bias = g.op("Reshape", [bias, g.const("shape", np.array([n, cout]))])
        if coutp != cout:  # pad the per-patch filters with zero outputs up to a whole block
            kern = g.op("Pad", [kern, g.const("pads", np.array([0, 0, 0, 0, coutp - cout, 0]))])
            bias = g.op("Pad", [bias, g.const("pads", np.array([0, 0, 0, coutp - cout]))])
        bias = g.op("Reshape", [bias, g.const("shape", np.array([n * coutp]))])
        kern = g.op("Reshape", [kern, g.const("shape", np.array([n, coutp // block, block, cin // block, block, ks,
                                                                    ks]))])
        kern = g.op("Transpose", [kern], perm=[0, 1, 3, 5, 6, 4, 2])  # -> [N, O/B, I/B, kh, kw, Bi, Bo]
    kern = g.op("Reshape", [kern, g.const("shape", np.array([n * coutp, cin, ks, ks]))])
    # patches folded into channels (0 = keep that dim: height and width stay dynamic)
    xg = g.op("Reshape", [t, g.const("shape", np.array([1, n * cin, 0, 0]))])
    addg = g.op("Reshape", [add, g.const("shape", np.array([1, n * coutp, 0, 0]))]) if add else None
    y = _conv(g, xg, kern, bias, group=n, ks=ks, relu=relu, add=addg)
    return g.op("Reshape", [y, g.const("shape", np.array([n, coutp, 0, 0]))])


def _static_conv(g: _Graph, t: str, conv, block: int, relu=False, add=None, in_pad=None, out_pad=None) -> str:
    w = conv.effective_weight().detach().float().numpy()
    b = conv.bias.detach().float().numpy()
    out = out_pad or w.shape[0]
    bias = np.zeros(out, np.float32)
    bias[:w.shape[0]] = b
    wb = _blocked_filter(w, block, in_pad, out_pad)
    return _conv(g, t, g.const("w", wb), g.const("b", bias), ks=conv.kernel_size, relu=relu, add=add)


def build_nchwc_onnx(loaded, patch_batch: int, block: int, opset: int = 17):
    """The patch network ``x, valid -> y`` for a fixed patch batch (any patch size), in NCHWc form."""
    from onnx import TensorProto, helper

    net, cfg = loaded.net, loaded.config
    why = unsupported_reason(cfg, block)
    if why:
        raise NSRError(f"conv form 'nchwc' is not available: {why}")
    n = patch_batch
    g = _Graph()
    xm = g.op("Sub", ["x", g.const("mean", np.float32(cfg.image_mean))])
    cpad = _round_up(cfg.channels, block)
    t = xm
    if cpad != cfg.channels:  # ReorderInput wants a multiple of 4 channels: zero channels up to the block
        t = g.op("Pad", [t, g.const("pads", np.array([0, 0, 0, 0, 0, cpad - cfg.channels, 0, 0]))])
    t = g.op("ReorderInput", [t], "reorder", DOMAIN)
    t = _static_conv(g, t, net.body[0], block, in_pad=cpad)
    for blk in net.body[1:-1]:
        c1, c2 = blk.body[0], blk.body[2]
        if cfg.sparse:
            u = _sparse_conv(g, t, c1, n, block, relu=True, add=None)
            t = _sparse_conv(g, u, c2, n, block, relu=False, add=t)
        else:
            u = _static_conv(g, t, c1, block, relu=True)
            t = _static_conv(g, u, c2, block, add=t)
    out_ch = cfg.out_channels
    t = _static_conv(g, t, net.body[-1], block, out_pad=_round_up(out_ch, block))
    body = g.op("ReorderOutput", [t], "reorder", DOMAIN, channels=out_ch)
    s = g.op("Mul", [xm, "valid"])
    if len(net.skip):
        conv = net.skip[0]
        w = g.const("skip_w", conv.effective_weight().detach().float().numpy())
        b = g.const("skip_b", conv.bias.detach().float().numpy())
        s = g.op("Conv", [s, w, b], kernel_shape=[conv.kernel_size] * 2, pads=[conv.kernel_size // 2] * 4)
    y = g.op("Add", [body, s])
    if cfg.scale > 1:
        y = g.op("DepthToSpace", [y], blocksize=cfg.scale, mode="CRD")
    y = g.op("Add", [y, g.const("mean", np.float32(cfg.image_mean))])
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(
        g.nodes, "nsr_patch_network_nchwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cfg.channels, "height", "width"]),
         helper.make_tensor_value_info("valid", TensorProto.FLOAT, [n, 1, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, cfg.channels, "out_height", "out_width"])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])
    helper.set_model_props(model, {"nsr_nchwc_block": str(block)})
    return model


def build_nchwc_layer(conv, patch_batch: int, block: int, opset: int = 17):
    """One conv as a graph ``x [N, C, H, W] -> y`` in NCHWc form (for the bench's Figure 5 protocol):
    a :class:`SparseConv2d` with per-patch kernels, or a plain conv (the baseline's own NCHWc path)."""
    from onnx import TensorProto, helper

    from nsr_deploy.models.sparse_conv import SparseConv2d

    cin = conv.in_channels
    if cin % block:
        raise NSRError(f"conv form 'nchwc' needs input channels that are a multiple of {block}")
    g = _Graph()
    t = g.op("ReorderInput", ["x"], "reorder", DOMAIN)
    if isinstance(conv, SparseConv2d):
        cout = conv.patch_out_channels
        t = _sparse_conv(g, t, conv, patch_batch, block, relu=False, add=None)
    else:
        cout = conv.out_channels
        w = conv.weight.detach().float().numpy()
        b = conv.bias.detach().float().numpy()
        coutp = _round_up(cout, block)
        bias = np.zeros(coutp, np.float32)
        bias[:cout] = b
        t = _conv(g, t, g.const("w", _blocked_filter(w, block, out_pad=coutp)), g.const("b", bias),
                  ks=w.shape[-1])
    g.nodes.append(helper.make_node("ReorderOutput", [t], ["y"], domain=DOMAIN, channels=cout))
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [patch_batch, cin, "h", "w"])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [patch_batch, cout, "h", "w"])
    graph = helper.make_graph(g.nodes, "nsr_layer_nchwc", [x_info], [y_info], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])
