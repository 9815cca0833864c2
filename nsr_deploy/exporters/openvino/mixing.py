"""Eq. 10's kernel mixing (Fan et al., NeurIPS 2020) in OpenVINO opsets, for the graphs built from opsets.

``W_hat[n, j] = sum_i gamma[n, j, i] * W[j, i]``: one kernel per patch ``n`` and cardinal ``j`` from the k
stacked kernels. Written as k broadcast Multiply-Adds, the CPU plugin fuses them into one pass over the
output (a Snippets subgraph); a batched MatMul with one row per (patch, cardinal) took twice as long
(0.29 vs 0.58 ms per layer for 16 patches of EDSR+NSR x2, 2 threads) and the whole fp32 model 4-5% longer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def mix_kernels(gamma, stacked: np.ndarray, name: Callable | None = None):
    """``gamma`` ``[N, d, k]`` (softmax over k) and constant ``stacked`` ``[d, k, F]`` -> ``[N, d, F]``.
    ``name(node, suffix)`` names the ops (the folded form names them after the checkpoint's layer)."""
    import openvino.opset13 as ops

    def named(node, suffix: str):
        return name(node, suffix) if name else node

    mixed = None
    for i in range(stacked.shape[1]):
        weight = ops.gather(gamma, ops.constant(np.array(i, np.int64)), ops.constant(np.array(2, np.int64)))
        weight = ops.unsqueeze(weight, ops.constant(np.array([2], np.int64)))  # [N, d, 1]
        term = named(ops.multiply(weight, ops.constant(np.ascontiguousarray(stacked[:, i], np.float32))),
                     f"MixKernels_{i}")
        mixed = term if mixed is None else named(ops.add(mixed, term), f"MixKernels_sum{i}")
    return mixed
