"""Single-layer graphs for the Figure 5 protocol in ONNX Runtime, OpenVINO and ExecuTorch.

A sparse conv is exported the way the model exporter exports each of a network's sparse convs (the
deploy rewrite :class:`~nsr_deploy.models.deploy.DeploySparseConv` in one conv form, traced, then
onnxsim), and the baseline is a plain ``Conv``. Shapes are static (one engine per batch and patch
size). The graphs take one input ``x`` and give ``y``; the runners below configure their runtime
exactly as the product's runners do (session options, threads, precision pinning), with only the
call changed to that single input. ExecuTorch's are ``.pte`` files lowered from the same PyTorch modules
by the ExecuTorch target's own lowering (XNNPACK partitioner, static shapes).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from nsr_deploy.core.capabilities import EXECUTORCH_ONLY_FORMS, ONNX_FORMS
from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.base import Runner
from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

LAYER_FORMS = (*ONNX_FORMS, *EXECUTORCH_ONLY_FORMS)  # nchwc: ONNX Runtime only (exporters.nchwc)


def export_nchwc_layer(conv, batch: int, path: Path, opset: int = 17) -> Path:
    """``conv`` (sparse or plain) as a single-layer graph in ONNX Runtime's NCHWc form."""
    from nsr_deploy.exporters.onnx.nchwc import build_nchwc_layer, mlas_block_size

    block = mlas_block_size()
    if block <= 1:
        raise NSRError("this ONNX Runtime build has no NCHWc kernels")
    path.write_bytes(build_nchwc_layer(conv, batch, block, opset).SerializeToString())
    return path


def export_layer(module, x, path: Path, opset: int = 17) -> Path:
    """Trace ``module`` on ``x`` (static shapes) to ``path`` as a simplified ONNX model."""
    from nsr_deploy.exporters.onnx.graph import trace_simplified

    model = trace_simplified(module, (x,), ["x"], opset, what="a single-layer graph")
    path.write_bytes(model.SerializeToString())
    return path


def export_layer_pte(module, x, path: Path) -> Path:
    """``module`` on ``x`` (static shapes) lowered to XNNPACK as a ``.pte`` at ``path``; refused if a sparse
    layer's op falls back, as the ExecuTorch export refuses it."""
    from nsr_deploy.exporters.executorch.target import delegation, lower, quiet, refuse_fallback

    edge = lower(module.eval(), (x,))
    refuse_fallback(delegation(edge), "layer", False)
    with quiet():
        path.write_bytes(edge.to_executorch().buffer)
    return path


class LayerOrtRunner(OrtRunner):
    """ONNX Runtime, exactly as :class:`OrtRunner` configures it, on a one-input graph."""

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.session.run(["y"], {"x": x})[0]


@functools.lru_cache(maxsize=1)
def _ov_core():
    """One OpenVINO Core for every layer graph: each new Core loads the CPU plugin again."""
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    return ov.Core()


class LayerOvRunner(Runner):
    """OpenVINO with :class:`OvRunner`'s compile configuration (f32 execution, latency hint, threads,
    no model cache) on a one-input graph, read straight from the ONNX file (``read_model``: the same
    model ``convert_model`` gives, without its second of overhead per graph)."""

    backend = "openvino"

    def __init__(self, path: str, threads: int | None = None):
        from nsr_deploy.runtimes.openvino.runner import OvRunner

        super().__init__(path, threads)
        self.config = OvRunner(path, threads, cache=False).compile_config()
        self.compiled = self.request = None

    def _activate(self) -> None:
        core = _ov_core()
        self.compiled = core.compile_model(core.read_model(self.path), "CPU", self.config)
        self.request = self.compiled.create_infer_request()

    def _deactivate(self) -> None:
        self.compiled = self.request = None

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        self.request.infer({"x": x})
        return self.request.get_output_tensor(0).data.copy()


class LayerExecuTorchRunner(Runner):
    """ExecuTorch's runtime as :class:`ExecuTorchRunner` loads it (XNNPACK pool of ``threads``), one input."""

    backend = "executorch"

    def _activate(self) -> None:
        from nsr_deploy.runtimes.executorch.runner import load_method

        self.method = load_method(self.path, self.threads)

    def _deactivate(self) -> None:
        self.method = None

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute([torch.from_numpy(x)])[0].numpy().copy()


# the backends whose runners take a single-layer graph (the ONNX layer file, or ExecuTorch's .pte of it)
LAYER_RUNNERS = {"onnxruntime": LayerOrtRunner, "openvino": LayerOvRunner, "executorch": LayerExecuTorchRunner}


def layer_runner(backend: str, onnx_path: Path, threads: int) -> Runner:
    if backend not in LAYER_RUNNERS:
        raise NSRError(f"no single-layer graphs for {backend}")
    return LAYER_RUNNERS[backend](str(onnx_path), threads)
