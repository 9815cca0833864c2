"""Run an fp16 ONNX graph *in fp16* on a CPU: the gate runtime of ``model.fp16.onnx``.

Measured on this project's x86 machines (README, "fp16 ONNX"): ONNX Runtime's CPU provider has no
fp16 Conv / MatMul / Mul kernels and runs those nodes in fp32, dropping the fp16 rounding between
them (a 1e5 intermediate that overflows fp16 comes out finite); OpenVINO's CPU plugin runs an fp16
model in f32 (``INFERENCE_PRECISION_HINT=f32``) or bf16 (``f16`` is answered with bf16 without
AVX512-FP16). Neither shows what a GPU runtime reading the fp16 graph sees.

ONNX's own reference implementation (``onnx.reference``) does: it runs every node in the graph's
types with numpy, so each fp16 node's output is rounded to fp16 and overflows to inf. Two of its
kernels are replaced by faster ones with the same numerics: MatMul and Conv take their fp16 inputs,
accumulate in fp32 (as numpy's fp16 matmul and GPU fp16 kernels do) and round the result to fp16.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.base import Runner


def _fast_kernels():
    """MatMul and Conv for ``onnx.reference``: fp32 accumulation, output in the inputs' type."""
    from onnx.reference.ops.op_conv import Conv as ReferenceConv
    from onnx.reference.ops.op_matmul import MatMul as ReferenceMatMul

    class MatMul(ReferenceMatMul):
        def _run(self, a, b):
            out = np.matmul(a.astype(np.float32, copy=False), b.astype(np.float32, copy=False))
            return (out.astype(a.dtype, copy=False),)

    class Conv(ReferenceConv):
        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
                 strides=None):
            if X.ndim != 4 or auto_pad not in (None, "NOTSET"):
                return super()._run(X, W, B, auto_pad, dilations, group, kernel_shape, pads, strides)
            import torch
            import torch.nn.functional as F

            top, left, bottom, right = pads or (0, 0, 0, 0)
            x = F.pad(torch.from_numpy(X.astype(np.float32)), (left, right, top, bottom))
            bias = None if B is None else torch.from_numpy(B.astype(np.float32))
            with torch.no_grad():
                y = F.conv2d(x, torch.from_numpy(W.astype(np.float32)), bias, tuple(strides or (1, 1)), 0,
                             tuple(dilations or (1, 1)), group or 1)
            return (y.numpy().astype(X.dtype, copy=False),)

    return [MatMul, Conv]


class Fp16GraphRunner(Runner):
    """The patch network of an ONNX file through ``onnx.reference`` (see the module docstring)."""

    backend = "onnx-reference"
    precision = "fp16"

    def _activate(self) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(self.path)
        try:
            self.evaluator = ReferenceEvaluator(model, new_ops=_fast_kernels())
        except Exception as e:  # the evaluator raises several types for graphs it cannot run
            why = str(e).splitlines()[0][:200]
            raise NSRError(f"{self.path}: the ONNX reference evaluator cannot run it ({why})") from None
        first = model.graph.input[0].type.tensor_type.shape.dim[0]
        self.static_batch = first.dim_value if first.HasField("dim_value") else None

    def _deactivate(self) -> None:
        self.evaluator = None

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():  # fp16 overflow is reported by the gate, not as numpy warnings
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(self.evaluator.run(["y"], {"x": x, "valid": valid})[0], np.float32)
