"""ONNX Runtime (CPU execution provider) runner."""

from __future__ import annotations

import numpy as np

from nsr_deploy.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner


def unavailable() -> str | None:
    """None when usable, else why not."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed ({e.name}); pip install 'nsr-deploy[runtime]'"
    return None


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str, threads: int | None = None, optimization: str = "all"):
        super().__init__(path, threads)
        self.optimization = optimization
        self.session = None

    def _activate(self) -> None:
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise NSRError(f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        shape = self.session.get_inputs()[0].shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self._check_nchwc_block()

    def _check_nchwc_block(self) -> None:
        """An ``nchwc`` model's filters are laid out for one NCHWc block size: refuse another."""
        want = self.session.get_modelmeta().custom_metadata_map.get("nsr_nchwc_block")
        if want is None:
            return
        from nsr_deploy.runtimes.nchwc_probe import mlas_block_size

        have = mlas_block_size()
        if int(want) != have:
            self.session = None
            raise NSRError(f"{self.path}: exported in the 'nchwc' conv form for NCHWc block {want}, but this "
                           f"machine's ONNX Runtime uses {have or 'none'}; re-export with a portable --conv-form")

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.session.run(["y"], {"x": x, "valid": valid})[0]
