"""The int8 convs of a sparse NSR model's OpenVINO graph, the per-patch ones included (Fan et al., NeurIPS
2020, Eq. 7-10): the :class:`~nsr_deploy.exporters.openvino.network.ConvHook` that
:func:`~nsr_deploy.exporters.openvino.network.build_network` walks the network with.

Why written here and not left to NNCF: the CPU plugin runs a convolution whose weights are computed at run time
(the per-patch kernel of Eq. 10) in int8 -- ``brgconv_avx512_I8`` -- only when its input is
quantised *unsigned without zero point* (FakeQuantize output range ``[0, hi]``) and its weights
symmetric int8 (levels 255). A signed input falls back to f32 (measured: ``tools/int8_study.py``),
because the zero-point compensation the plugin precomputes for constant weights cannot be
precomputed for run-time ones. So:

* the conv after the ReLU (``conv2`` of a block) gets ``FQ(x)`` in ``[0, hi]``: unsigned already;
* the conv on the signed residual stream (``conv1``) sees ``u = x - lo`` (FakeQuantize's output range
  shifted to ``[0, hi - lo]``) on an explicitly zero-padded input (so the border pads ``-lo`` too),
  and ``conv(u, W) = conv(x, W) - lo * sum(W)``: the ``- lo * sum(W)`` is folded into the stacked
  biases before mixing (exact by linearity: the softmax weights of one cardinal sum to one);
* the per-patch weights get a static per-output-channel range ``max_i |W_i[c]|``: a convex mix of
  the k kernels never leaves it, so the quantiser never clips.

Layout ``split`` (the default) keeps the patch batch (``[N, C, h, w]``) and runs each per-patch conv
as one Convolution per patch between an outer-axis Split and Concat: every patch's activations stay
contiguous. ``folded`` puts the batch in channels from head to tail (``[1, N*C, h, w]``, one
GroupConvolution per layer, head / tail / skip with their weights repeated): N times fewer nodes, but
the channels-last int8 layout then interleaves all patches. On EDSR+NSR x2 split was the faster in two
of three whole-model runs on a loaded 2-core machine (README; ``tools/int8_study.py model``).
Pooling MLP, softmax and mixing are f32.
With ``ranges=None`` the same graph is built in f32 (the calibration pass and a parity reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import nsr_deploy.runtimes.openvino.quiet_import  # noqa: F401 (OpenVINO's telemetry off before its first import)
from nsr_deploy.exporters.openvino.mixing import mix_kernels
from nsr_deploy.exporters.openvino.network import ConvHook, build_network, constant

LEVELS_ACT = 256
LEVELS_WEIGHT = 255  # symmetric int8 weights: the plugin's i8 weight path
PATCH_SEP = ":patch"  # split layout: the per-patch convs of layer L are named L:patch0, L:patch1, ...


@dataclass(frozen=True)
class ConvWeights:
    """One conv layer's constants (numpy): a plain conv has ``weight`` ``[cout, cin, ks, ks]``; a sparse
    one has the k kernels ``weight`` ``[k*cout, cin, ks, ks]`` (group outermost) and its pooling MLP."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    k: int = 1
    d: int = 1
    mlp_weight: np.ndarray | None = None  # [k*d, cin] (torch Linear layout, rows (k, d))
    mlp_bias: np.ndarray | None = None

    @property
    def sparse(self) -> bool:
        return self.mlp_weight is not None

    @property
    def cout(self) -> int:
        return self.weight.shape[0] // self.k

    @property
    def ks(self) -> int:
        return self.weight.shape[-1]

    def weight_bound(self) -> np.ndarray:
        """Per output channel, the largest |weight| any convex mix of the k kernels can have."""
        w = np.abs(self.weight).reshape(self.k, self.cout, -1)
        return w.max(axis=(0, 2))


def weights_of(net) -> dict[str, ConvWeights]:
    """Checkpoint layer name -> its constants, from an ``NSRNet`` (weight norm folded)."""
    from nsr_deploy.models.conv import Conv2d
    from nsr_deploy.models.sparse_conv import SparseConv2d

    out = {}
    for name, m in net.named_modules():
        if not isinstance(m, Conv2d):
            continue
        w = m.effective_weight().detach().float().numpy()
        b = m.bias.detach().float().numpy()
        if isinstance(m, SparseConv2d):
            lin = m.mlp[0]
            out[name] = ConvWeights(name, w, b, m.groups, m.cardinals, lin.weight.detach().float().numpy(),
                                    lin.bias.detach().float().numpy())
        else:
            out[name] = ConvWeights(name, w, b)
    return out


@dataclass(frozen=True)
class Range:
    """A conv input's calibrated range (f32 min / max over the calibration tiles)."""

    lo: float
    hi: float

    def aligned(self) -> tuple[float, float]:
        """``(lo, hi)`` covering the range, with zero on the 256-level grid (padding zeros quantise
        exactly): the zero point is rounded, then the step widened until both ends fit."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi - lo <= 0:
            return 0.0, 1.0
        top = LEVELS_ACT - 1
        zero = min(max(round(-lo / ((hi - lo) / top)), 0), top)
        step = max(-lo / zero if zero else 0.0, hi / (top - zero) if zero < top else 0.0)
        return -zero * step, (top - zero) * step


LAYOUTS = ("split", "folded")


class Int8Convs(ConvHook):
    """The convs with FakeQuantize on their inputs and weights where ``ranges`` say (f32 without), in the
    ``split`` or ``folded`` layout; every conv input is kept in ``probes`` (the calibration outputs)."""

    def __init__(self, cfg, convs: dict[str, ConvWeights], batch: int, ranges: dict[str, Range] | None,
                 layout: str):
        import openvino.opset13 as ops

        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}")
        self.ops, self.cfg, self.convs, self.n, self.ranges = ops, cfg, convs, batch, ranges
        self.folded = layout == "folded"
        self.model_name = f"nsr-int8-{layout}"
        self.probes: dict[str, object] = {}  # conv name -> its input (calibration outputs)

    def c(self, value, dtype=np.float32):
        return constant(value, dtype)

    def i64(self, value):
        return self.c(value, np.int64)

    def fq(self, x, lo, hi, levels, out_lo=None, out_hi=None):
        return self.ops.fake_quantize(x, self.c(lo), self.c(hi), self.c(lo if out_lo is None else out_lo),
                                      self.c(hi if out_hi is None else out_hi), levels)

    # -- convs ------------------------------------------------------------------------------
    def quantised(self, name: str) -> bool:
        """A conv runs int8 when it has a range; the rest (f32 graph, layers kept float) stay f32."""
        return self.ranges is not None and name in self.ranges

    def _input(self, name: str, x):
        self.probes[name] = x
        if not self.quantised(name):
            return x, 0.0
        lo, hi = self.ranges[name].aligned()
        return self.fq(x, lo, hi, LEVELS_ACT), lo

    def _weight_fq(self, name: str, w, bound: np.ndarray, shape: list[int]):
        if not self.quantised(name):
            return w
        r = np.maximum(bound, np.float32(1e-12)).astype(np.float32).reshape(shape)
        return self.fq(w, -r, r, LEVELS_WEIGHT)

    def plain(self, name: str, x):
        """A conv with patch-shared constant weights (folded: a GroupConvolution, the weights repeated)."""
        cw = self.convs[name]
        n, p = self.n, cw.ks // 2
        xq, _ = self._input(name, x)
        if not self.folded:
            w = self._weight_fq(name, self.c(cw.weight), cw.weight_bound(), [cw.cout, 1, 1, 1])
            y = self.ops.convolution(xq, w, [1, 1], [p, p], [p, p], [1, 1])
            y.set_friendly_name(name)  # the runtime graph names its conv after it: the int8 check reads it
            return self.ops.add(y, self.c(cw.bias.reshape(1, -1, 1, 1)))
        w = self.c(np.broadcast_to(cw.weight, (n, *cw.weight.shape)))
        w = self._weight_fq(name, w, np.tile(cw.weight_bound(), n), [n, cw.cout, 1, 1, 1])
        y = self.ops.group_convolution(xq, w, [1, 1], [p, p], [p, p], [1, 1])
        y.set_friendly_name(name)
        return self.ops.add(y, self.c(np.tile(cw.bias, n).reshape(1, -1, 1, 1)))

    def sparse(self, name: str, x, unsigned: bool):
        """The per-patch conv: pooling MLP -> softmax over k (Eq. 7) -> mixed kernel and bias (Eq. 10)
        -> GroupConvolution with one group per patch."""
        ops, cw, n = self.ops, self.convs[name], self.n
        k, d, cout, ks = cw.k, cw.d, cw.cout, cw.ks
        cin = cw.weight.shape[1]
        pooled = ops.reshape(ops.reduce_mean(x, self.i64([2, 3]), False), self.i64([n, cin]), False)
        # MLP rows reordered (k, d) -> (d, k): logits come out [N, d, k], softmax over the last axis
        order = np.arange(k * d).reshape(k, d).T.reshape(-1)
        logits = ops.add(ops.matmul(pooled, self.c(cw.mlp_weight[order].T), False, False), self.c(cw.mlp_bias[order]))
        gamma3 = ops.softmax(ops.reshape(logits, self.i64([n, d, k]), False), 2)
        gamma = ops.unsqueeze(gamma3, self.i64([2]))
        w6 = cw.weight.reshape(k, d, cout // d, -1)
        bias = cw.bias.reshape(k, d, cout // d).astype(np.float64)
        if not self.quantised(name) or unsigned:
            xq, pad = self._input(name, x)[0], ks // 2
        else:  # signed input: zero-pad, then quantise x - lo (unsigned); conv(x) = conv(x - lo) + lo * sum(W)
            self.probes[name] = x
            lo, hi = self.ranges[name].aligned()
            # pad in f32, then quantise: a Pad after the FakeQuantize (on u8 data) makes the plugin's
            # low-precision pass give up and run the conv f32 (measured: 16 of 16 conv1s)
            pads = self.i64([0, 0, ks // 2, ks // 2])
            xq = self.fq(ops.pad(x, pads, pads, "constant", self.c(0.0)), lo, hi, LEVELS_ACT, 0.0, hi - lo)
            pad = 0
            bias = bias + lo * w6.astype(np.float64).sum(axis=3)
        stacked_w = w6.transpose(1, 0, 2, 3).reshape(d, k, -1)
        stacked_b = bias.astype(np.float32).transpose(1, 0, 2)
        w = ops.reshape(mix_kernels(gamma3, stacked_w), self.i64([n, cout, cin, ks, ks]), False)
        b = ops.matmul(gamma, self.c(stacked_b), False, False)
        b = ops.reshape(b, self.i64([1, n * cout, 1, 1] if self.folded else [n, cout, 1, 1]), False)
        if self.folded:
            w = self._weight_fq(name, w, np.tile(cw.weight_bound(), n), [n, cout, 1, 1, 1])
            y = ops.group_convolution(xq, w, [1, 1], [pad, pad], [pad, pad], [1, 1])
            y.set_friendly_name(name)
            return ops.add(y, b)
        # split: one Convolution per patch; an outer-axis Split / Concat of a batch is free in memory,
        # and each patch's activations stay contiguous (the folded layout interleaves all patches).
        # Each patch's weights are quantised after the Split: quantised before it, every conv runs f32.
        xs, ws = ops.split(xq, self.i64(0), n).outputs(), ops.split(w, self.i64(0), n).outputs()
        ys = []
        for i, (xi, wi) in enumerate(zip(xs, ws)):
            wi = self._weight_fq(name, ops.squeeze(wi, self.i64([0])), cw.weight_bound(), [cout, 1, 1, 1])
            yi = ops.convolution(xi, wi, [1, 1], [pad, pad], [pad, pad], [1, 1])
            yi.set_friendly_name(f"{name}{PATCH_SEP}{i}")
            ys.append(yi)
        return ops.add(ops.concat(ys, 0), b)

    def fold(self, x, channels: int):
        """``[N, C, h, w]`` -> ``[1, N*C, h, w]``: the patches side by side in channels (folded layout)."""
        if not self.folded:
            return x
        return self.ops.reshape(x, self.i64([1, self.n * channels, 0, 0]), True)

    # -- the hook ---------------------------------------------------------------------------
    def conv(self, name: str, x, unsigned: bool = False):
        return self.sparse(name, x, unsigned) if self.convs[name].sparse else self.plain(name, x)

    def to_body(self, x):
        return self.fold(x, self.cfg.channels)

    def to_skip(self, s):
        return self.fold(s, self.cfg.channels)

    def to_output(self, y):
        return self.ops.reshape(y, self.i64([self.n, self.cfg.out_channels, 0, 0]), True)  # 0: keep h, w


def build_graph(cfg, convs: dict[str, ConvWeights], batch: int, ranges: dict[str, Range] | None = None,
                probes: bool = False, layout: str = "split"):
    """The network for ``batch`` patches in ``layout``; int8 where ``ranges`` (conv name -> input range) say,
    f32 without. ``probes=True`` adds every conv input as an extra output (the calibration pass)."""
    hook = Int8Convs(cfg, convs, batch, ranges, layout)
    model = build_network(cfg, batch, hook)
    if probes:
        for name, node in hook.probes.items():
            model.add_outputs(node.output(0))
            model.outputs[-1].get_tensor().set_names({f"probe:{name}"})
    return model
