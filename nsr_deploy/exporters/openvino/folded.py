"""The ``folded`` conv form: an OpenVINO graph built from its opsets directly, with the patch batch folded
into channels from head to tail (Fan et al., NeurIPS 2020, Eq. 7-10).

The ``grouped`` ONNX form folds the patches into channels only around each per-patch conv and unfolds
them after it, and OpenVINO's CPU plugin answers every batch <-> channel Reshape with layout Reorders;
its bias, ReLU and residual Adds then sit between Reshapes and stay unfused Eltwise ops. Here the whole
network runs on ``[1, N*C, h, w]``:

* the head is a GroupConvolution (groups = N) whose constant weights are the layer's weights broadcast
  over the N groups (a Tile the plugin folds at compile time: the file stores them once); tail and skip
  are plain Convolutions after the unfold (see :meth:`FoldedConvs.batch_conv` for why);
* each sparse conv pools its input (ReduceMean over h, w), runs the MLP and the softmax over k (Eq. 7-9)
  and mixes the stacked kernels (k broadcast Multiply-Adds, :mod:`.mixing`) and biases (a batched
  MatMul) (Eq. 10); the per-patch conv is one GroupConvolution with the mixed ``[N, out, in, 3, 3]``
  kernels; its run-time bias is one Eltwise pass that the plugin fuses the ReLU and the residual Add into
  (a run-time bias cannot become a conv post-op);
* only the head's input and the tail's input are reshaped (``[N, C, h, w]`` <-> ``[1, N*C, h, w]``).

The walk through the network (head, blocks, tail, skip, pixel shuffle) is :mod:`.network`'s, shared with
the int8 graph; this module says how each conv is written.

The I/O contract is the other forms' (``x``, ``valid`` -> ``y``); the patch batch is fixed (the number of
groups is the kernels' first dim, fixed by the constant convs), the patch size is dynamic. Weights come
from the deploy rewrite (:class:`~nsr_deploy.models.deploy.DeployNet`, weight norm folded), so the file is
a function of the checkpoint alone: the same checkpoint gives the same bytes.
"""

from __future__ import annotations

import numpy as np

import nsr_deploy.runtimes.openvino.quiet_import  # noqa: F401 (OpenVINO's telemetry off before its first import)
from nsr_deploy.exporters.openvino.mixing import mix_kernels
from nsr_deploy.exporters.openvino.network import ConvHook, build_network


def _const(array) -> object:
    import openvino.opset13 as ops

    return ops.constant(np.ascontiguousarray(np.asarray(array, dtype=np.float32)))


def _ints(values) -> object:
    import openvino.opset13 as ops

    return ops.constant(np.asarray(values, dtype=np.int64))


class FoldedConvs(ConvHook):
    """The convs of a :class:`~nsr_deploy.models.deploy.DeployNet` on the folded ``[1, N*C, h, w]`` tensor.
    Layer names follow the checkpoint (``/body/body.1/body/body.0/Conv``, as the ONNX-lowered graph names
    them), so :mod:`.op_roles` classifies its ops the same way."""

    model_name = "nsr-folded"

    def __init__(self, deploy_net, batch: int):
        self.net = deploy_net
        self.n = batch
        self.modules = dict(deploy_net.named_modules())
        cfg = deploy_net.config
        self.unfolded = {f"body.{cfg.num_blocks + 1}", "skip.0"}  # tail and skip: see batch_conv

    def constant(self, value):
        return _const(value)  # at least 1-d: a scalar mean is stored as shape [1]

    def name(self, node, layer: str, op: str):
        parts = layer.split(".")  # body.1.body.0 -> /body/body.1/body/body.0
        path = "".join(f"/{name}/{name}.{index}" for name, index in zip(parts[::2], parts[1::2]))
        node.set_friendly_name(f"{path}/{op}")
        return node

    def to_body(self, x):
        import openvino.opset13 as ops

        return ops.reshape(x, _ints([1, self.n * self.net.config.channels, 0, 0]), True)  # 0: keep h and w

    def to_tail(self, h):
        import openvino.opset13 as ops

        tail = self.modules[f"body.{self.net.config.num_blocks + 1}"]
        return ops.reshape(h, _ints([self.n, tail.weight.shape[1], 0, 0]), True)

    def conv(self, layer: str, x, unsigned: bool = False):
        from nsr_deploy.models.deploy import DeploySparseConv

        module = self.modules[layer]
        if layer in self.unfolded:
            return self.batch_conv(x, module, layer)
        if isinstance(module, DeploySparseConv):
            return self.sparse_conv(x, module, layer)
        return self.folded_conv(x, module, layer)

    def folded_conv(self, x, module, layer: str):
        """A constant-weight conv on the folded tensor: GroupConvolution, its weights broadcast over the N
        patches by a Tile of the one stored copy (constant-folded by the plugin at compile time)."""
        import openvino.opset13 as ops

        w = module.weight.numpy()
        pad = w.shape[-1] // 2
        weights = ops.tile(_const(w[None]), _ints([self.n, 1, 1, 1, 1]))
        y = self.name(ops.group_convolution(x, weights, [1, 1], [pad, pad], [pad, pad], [1, 1]), layer, "Conv")
        bias = ops.tile(_const(module.bias.numpy().reshape(1, -1, 1, 1)), _ints([1, self.n, 1, 1]))
        return self.name(ops.add(y, bias), layer, "Add")

    def batch_conv(self, x, module, layer: str):
        """A constant-weight conv on the unfolded ``[N, C, h, w]`` tensor (tail and skip). Besides saving the
        N-fold output channels of a folded tail, a plain Convolution is what makes the CPU plugin treat the
        graph as a CNN and give Eltwise ops the channels-last layout of the convs (no Reorders between)."""
        import openvino.opset13 as ops

        w = module.weight.numpy()
        pad = w.shape[-1] // 2
        y = self.name(ops.convolution(x, _const(w), [1, 1], [pad, pad], [pad, pad], [1, 1]), layer, "Conv")
        return self.name(ops.add(y, _const(module.bias.numpy().reshape(1, -1, 1, 1))), layer, "Add")

    def sparse_conv(self, x, module, layer: str):
        """Eq. 7-10 on the folded tensor: pool -> MLP -> softmax over k -> mixed kernels and biases -> one
        GroupConvolution with the per-patch kernels, plus the per-patch bias."""
        import openvino.opset1 as opset1
        import openvino.opset13 as ops

        n, k, d, cin, cout, ks = self.n, module.k, module.d, module.cin, module.cout, module.ks
        pooled = self.name(ops.reduce_mean(x, _ints([2, 3]), keep_dims=False), layer, "ReduceMean")
        # The MLP as W^T @ pooled^T, constant first: the plugin keeps it a MatMul (a constant second input
        # would make it a FullyConnected, which drops the keep-f32 mark that bf16 exports put on it).
        pooled = ops.reshape(pooled, _ints([n, cin, 1]), False)
        logits = self.name(ops.matmul(_const(module.mlp_weight.numpy().T), pooled, False, False), layer, "MatMul")
        logits = self.name(ops.add(logits, _const(module.mlp_bias.numpy().reshape(-1, 1))), layer, "MatMul_bias")
        gamma = ops.reshape(logits, _ints([n, d, k]), False)  # MLP rows are ordered (d, k)
        gamma = self.name(opset1.softmax(gamma, 2), layer, "Softmax")  # v1: the CPU plugin keeps its marks
        stacked = module.stacked.numpy().reshape(d, k, cout // d, cin * ks * ks + 1)
        kernels = mix_kernels(gamma, stacked[..., :-1].reshape(d, k, -1),
                              lambda node, op: self.name(node, layer, op))
        gamma = ops.reshape(gamma, _ints([n, d, 1, k]), False)
        biases = self.name(ops.matmul(gamma, _const(stacked[..., -1]), False, False), layer, "MixBiases")
        kernels = ops.reshape(kernels, _ints([n, cout, cin, ks, ks]), False)
        biases = ops.reshape(biases, _ints([1, n * cout, 1, 1]), False)
        pad = ks // 2
        y = self.name(ops.group_convolution(x, kernels, [1, 1], [pad, pad], [pad, pad], [1, 1]), layer, "Conv")
        return self.name(ops.add(y, biases), layer, "Add")


def build_folded(loaded, batch: int):
    """``ov.Model`` of ``loaded`` in the folded form, for a fixed patch batch ``batch``."""
    import torch

    from nsr_deploy.models.deploy import DeployNet

    if batch < 1:
        raise ValueError(f"patch batch must be >= 1, got {batch}")
    with torch.no_grad():
        net = DeployNet(loaded.net, "grouped", batch).eval()
    return build_network(net.config, batch, FoldedConvs(net, batch))
