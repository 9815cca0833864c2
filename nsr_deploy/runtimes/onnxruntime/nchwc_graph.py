"""The NSR patch network written in ONNX Runtime's blocked NCHWc layout, from plain numpy weights.

Torch-free on purpose: the exporter builds it from a PyTorch model (:mod:`nsr_deploy.exporters.onnx.nchwc`)
and the ONNX Runtime runner builds it at load time from the portable ``model.onnx``
(:mod:`.specialise`), for the block size of the CPU it runs on.

ONNX Runtime runs static convolutions fastest through its NCHWc kernels (MLAS), but it only
rewrites a Conv into that form when the weights are constant, so a per-patch conv with runtime
weights falls back to the slower im2col path. Here every conv, the per-patch ones included, is an
``com.microsoft.nchwc`` Conv: the kernel mixing (Eq. 10, one batched MatMul as in the portable
forms) writes the blocked filter layout ``OIHWBiBo`` directly (its stacked kernels are pre-arranged;
only widths that do not nest with the block mix in plain layout and transpose), and the patches are
folded into conv groups (group = batch), so the sparse layer runs on the same kernels as its dense
twin. ReLU and the residual add are fused into the convs. The block size (8 with AVX2, 16 with
AVX-512) is baked into the filters and the batch is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nsr_deploy.runtimes.onnxruntime.nchwc_probe import DOMAIN


@dataclass(frozen=True)
class StaticConv:
    """A conv with constant weights: ``w`` OIHW, ``b`` [O]."""

    w: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class SparseConv:
    """An NSR sparse conv (Eq. 7-10): ``w`` ``[k*out, in, ks, ks]`` (group index outermost, then
    cardinal), ``b`` ``[k*out]``, MLP ``mlp_w`` ``[in, d*k]`` / ``mlp_b`` ``[d*k]`` with logits ordered
    (cardinal, group), as the portable forms store them."""

    w: np.ndarray
    b: np.ndarray
    mlp_w: np.ndarray
    mlp_b: np.ndarray
    k: int
    d: int


@dataclass(frozen=True)
class NetWeights:
    """Everything the blocked graph needs: head, residual blocks (conv1, conv2), tail, optional skip."""

    channels: int
    out_channels: int
    scale: int
    image_mean: float
    head: StaticConv
    blocks: tuple
    tail: StaticConv
    skip: StaticConv | None

    @property
    def sparse(self) -> bool:
        return any(isinstance(c, SparseConv) for blk in self.blocks for c in blk)


def unsupported_reason(units: int, block_width: int, block: int) -> str | None:
    if block <= 1:
        return "this ONNX Runtime build has no NCHWc kernels"
    if units % block or block_width % block:
        return f"units ({units}) and block width ({block_width}) must be multiples of {block}"
    return None


def blocked_filter(w: np.ndarray, block: int, in_pad: int | None = None, out_pad: int | None = None) -> np.ndarray:
    """OIHW -> OIHWBiBo (as a 4-D tensor, the layout MLAS's NCHWc conv reads), zero-padding channels."""
    o, i, kh, kw = w.shape
    o2, i2 = out_pad or o, in_pad or i
    full = np.zeros((o2, i2, kh, kw), np.float32)
    full[:o, :i] = w
    blocked = full.reshape(o2 // block, block, i2 // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    return np.ascontiguousarray(blocked).reshape(o2, i2, kh, kw)


def round_up(n: int, block: int) -> int:
    return (n + block - 1) // block * block


class Graph:
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


def blocked_conv(g: Graph, x: str, w: str, b: str, group: int = 1, ks: int = 3, relu: bool = False,
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


def sparse_conv(g: Graph, t: str, conv: SparseConv, n: int, block: int, relu: bool, add: str | None) -> str:
    """Pool -> MLP -> softmax over k -> mixing MatMul into blocked filters -> grouped NCHWc conv."""
    k, d, w, b = conv.k, conv.d, conv.w, conv.b
    cout, cin, ks = w.shape[0] // k, w.shape[1], w.shape[2]
    # pooling over the patch, straight on the blocked tensor ([N, C/B, 1, 1, B] is [N, C] in memory)
    pooled = g.op("GlobalAveragePool", [t], "pool", DOMAIN)
    pooled = g.op("Reshape", [pooled, g.const("shape", np.array([n, cin]))])
    logits = g.op("Add", [g.op("MatMul", [pooled, g.const("mlp_w", conv.mlp_w)]), g.const("mlp_b", conv.mlp_b)])
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
        coutp = round_up(cout, block)
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
    y = blocked_conv(g, xg, kern, bias, group=n, ks=ks, relu=relu, add=addg)
    return g.op("Reshape", [y, g.const("shape", np.array([n, coutp, 0, 0]))])


def static_conv(g: Graph, t: str, conv: StaticConv, block: int, relu=False, add=None, in_pad=None,
                out_pad=None) -> str:
    out = out_pad or conv.w.shape[0]
    bias = np.zeros(out, np.float32)
    bias[:conv.w.shape[0]] = conv.b
    wb = blocked_filter(conv.w, block, in_pad, out_pad)
    return blocked_conv(g, t, g.const("w", wb), g.const("b", bias), ks=conv.w.shape[-1], relu=relu, add=add)


def build_blocked_network(net: NetWeights, patch_batch: int, block: int, opset: int = 17):
    """The patch network ``x, valid -> y`` for a fixed patch batch (any patch size), in NCHWc form."""
    from onnx import TensorProto, helper

    n = patch_batch
    g = Graph()
    xm = g.op("Sub", ["x", g.const("mean", np.float32(net.image_mean))])
    cpad = round_up(net.channels, block)
    t = xm
    if cpad != net.channels:  # ReorderInput wants a multiple of 4 channels: zero channels up to the block
        t = g.op("Pad", [t, g.const("pads", np.array([0, 0, 0, 0, 0, cpad - net.channels, 0, 0]))])
    t = g.op("ReorderInput", [t], "reorder", DOMAIN)
    t = static_conv(g, t, net.head, block, in_pad=cpad)
    for c1, c2 in net.blocks:
        if isinstance(c1, SparseConv):
            u = sparse_conv(g, t, c1, n, block, relu=True, add=None)
            t = sparse_conv(g, u, c2, n, block, relu=False, add=t)
        else:
            u = static_conv(g, t, c1, block, relu=True)
            t = static_conv(g, u, c2, block, add=t)
    out_ch = net.out_channels
    t = static_conv(g, t, net.tail, block, out_pad=round_up(out_ch, block))
    body = g.op("ReorderOutput", [t], "reorder", DOMAIN, channels=out_ch)
    s = g.op("Mul", [xm, "valid"])
    if net.skip is not None:
        ks = net.skip.w.shape[-1]
        s = g.op("Conv", [s, g.const("skip_w", net.skip.w), g.const("skip_b", net.skip.b)], kernel_shape=[ks] * 2,
                 pads=[ks // 2] * 4)
    y = g.op("Add", [body, s])
    if net.scale > 1:
        y = g.op("DepthToSpace", [y], blocksize=net.scale, mode="CRD")
    y = g.op("Add", [y, g.const("mean", np.float32(net.image_mean))])
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(
        g.nodes, "nsr_patch_network_nchwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, net.channels, "height", "width"]),
         helper.make_tensor_value_info("valid", TensorProto.FLOAT, [n, 1, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, net.channels, "out_height", "out_width"])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    helper.set_model_props(model, {"nsr_nchwc_block": str(block)})
    return model
