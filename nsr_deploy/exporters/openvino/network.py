"""The NSR network as an OpenVINO graph, written once from opsets (Fan et al., NeurIPS 2020, Eq. 6-10).

The walk is the checkpoint's (pt_ir's ``wdsr`` body): subtract the image mean, head conv, residual blocks
``x + conv2(relu(conv1(x)))``, tail conv plus the skip conv on the masked input, pixel shuffle
(DepthToSpace, ``depth_first`` is PyTorch's channel order), add the mean back. I/O is every form's
contract: ``x`` and ``valid`` (``[N, C, h, w]``, ``[N, 1, h, w]``, patch size dynamic) -> ``y``.

How each conv is written, and where the patch batch sits while it runs, is a :class:`ConvHook`'s:

* :class:`~nsr_deploy.exporters.openvino.folded.FoldedConvs` -- f32 / bf16: the batch folded into
  channels from head to tail, each sparse conv one GroupConvolution with the mixed per-patch kernels;
* :class:`~nsr_deploy.exporters.openvino.quantize.split_graph.Int8Convs` -- int8: FakeQuantize on each
  conv's input and weights, the per-patch convs split per patch (or folded).
"""

from __future__ import annotations

import numpy as np

import nsr_deploy.runtimes.openvino.quiet_import  # noqa: F401 (OpenVINO's telemetry off before its first import)
from nsr_deploy.exporters.openvino.op_roles import name_by_graph_order


class ConvHook:
    """What a graph family decides; the defaults keep the ``[N, C, h, w]`` batch layout throughout."""

    model_name = "nsr"

    def conv(self, layer: str, x, unsigned: bool = False):
        """The checkpoint's conv ``layer`` on ``x``; ``unsigned``: ``x`` is a ReLU output (int8 uses it)."""
        raise NotImplementedError

    def constant(self, value):
        """An f32 constant as this family writes them (the image mean); part of the file's bytes."""
        return constant(value)

    def name(self, node, layer: str, op: str):
        """Give ``node`` (op ``op`` of ``layer``) a name of its own, or leave it to graph order."""
        return node

    def to_body(self, x):
        """The mean-subtracted input, into the layout the head and blocks run in."""
        return x

    def to_tail(self, h):
        """The blocks' output, into the layout the tail runs in."""
        return h

    def to_skip(self, s):
        """The masked input, into the layout the skip conv (or the skip itself) runs in."""
        return s

    def to_output(self, y):
        """Tail plus skip, back to ``[N, C * scale^2, h, w]`` for the pixel shuffle."""
        return y


def constant(array, dtype=np.float32):
    import openvino.opset13 as ops

    return ops.constant(np.array(array, dtype, order="C"))  # a 0-d value stays 0-d


def build_network(cfg, batch: int, hook: ConvHook):
    """``ov.Model`` of the network described by ``cfg``, each conv built by ``hook``, for ``batch`` patches."""
    import openvino.opset13 as ops

    from nsr_deploy.runtimes.openvino.quiet_import import ov

    x = ops.parameter([batch, cfg.channels, -1, -1], np.float32, name="x")
    valid = ops.parameter([batch, 1, -1, -1], np.float32, name="valid")
    x.output(0).set_names({"x"})
    valid.output(0).set_names({"valid"})
    xm = ops.subtract(x, hook.constant(cfg.image_mean))
    h = hook.conv("body.0", hook.to_body(xm))
    for b in range(1, cfg.num_blocks + 1):
        block = f"body.{b}"
        t = hook.name(ops.relu(hook.conv(f"{block}.body.0", h)), f"{block}.body.1", "Relu")
        h = hook.name(ops.add(h, hook.conv(f"{block}.body.2", t, unsigned=True)), block, "Add")
    y = hook.conv(f"body.{cfg.num_blocks + 1}", hook.to_tail(h))
    s = hook.to_skip(ops.multiply(xm, valid))  # the skip sees zeros outside the image, as on the whole image
    y = hook.to_output(ops.add(y, hook.conv("skip.0", s) if cfg.has_skip else s))
    if cfg.scale > 1:
        y = ops.depth_to_space(y, "depth_first", cfg.scale)
    y = ops.add(y, hook.constant(cfg.image_mean))
    y.output(0).set_names({"y"})
    result = ops.result(y)
    result.set_friendly_name("y")
    # the same checkpoint gives the same bytes in any process, first export or tenth
    return name_by_graph_order(ov.Model([result], [x, valid], hook.model_name))
