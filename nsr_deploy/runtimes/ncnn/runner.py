"""ncnn runner for ``model.ncnn.param`` + ``model.ncnn.bin`` (the ``ncnn`` Python package). Imports no torch.

Choices, and why:

* **One patch per extractor call.** ncnn blobs have no batch axis (a Mat is ``[C, h, w]``); the export
  is traced at batch 1, and a graph traced at a larger batch converts but crashes ncnn when run. So
  the runner feeds each window of a batch through its own extractor on the one loaded net (extractors
  on a shared net are independent, which keeps ``infer`` thread-safe).
* **fp32 arithmetic everywhere.** ncnn switches on fp16 / bf16 storage and fp16 arithmetic where the
  device has them (ARMv8.2, Vulkan GPUs), which would put the sparsity softmax and the kernel mixing
  in half precision. The runner turns every reduced-precision option off, as the export gate ran it;
  ``fp16`` exports store half weights and are still computed in fp32 here.
* **CPU by default; Vulkan on request** (``vulkan=True``), only where ncnn sees a GPU. Never required,
  and not verified by the export gate, which runs on the CPU.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner

# pnnx names a traced module's inputs and outputs by position: x, valid -> in0, in1; y -> out0
INPUT_BLOBS = ("in0", "in1")
OUTPUT_BLOB = "out0"
REDUCED_PRECISION_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage")


def unavailable() -> str | None:
    """None when usable, else why not."""
    try:
        import ncnn  # noqa: F401
    except ImportError as e:
        return f"ncnn is not installed ({e.name}); pip install 'nsr-deploy[ncnn]'"
    return None


class NcnnRunner(Runner):
    backend = "ncnn"

    def __init__(self, path: str, threads: int | None = None, vulkan: bool = False, files=None):
        super().__init__(path, threads, files)
        self.vulkan = vulkan
        self.net = None

    def _activate(self) -> None:
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        import ncnn

        files = self.engine_files()  # the .param and its .bin, read once (hashed, in an export folder)
        if files.weights is None:
            raise NSRError(f"{self.path}: an ncnn model is a .param and its .bin")
        if self.vulkan and ncnn.get_gpu_count() == 0:
            raise BackendUnavailable("ncnn sees no Vulkan GPU here; run it on the CPU (vulkan=False)")
        net = ncnn.Net()
        net.opt.use_vulkan_compute = self.vulkan
        for option in REDUCED_PRECISION_OPTIONS:
            setattr(net.opt, option, False)
        if self.threads:
            net.opt.num_threads = self.threads
        # ncnn returns a status code (and logs to stderr) instead of raising
        try:
            param = files.engine.decode("utf-8")
        except UnicodeDecodeError:
            raise NSRError(f"{self.path}: not an ncnn .param file (not text)") from None
        # from memory: ncnn reads nothing from disk after the bytes were checked; it keeps pointers into
        # the weights, so they live as long as the runner (self._files)
        if net.load_param_mem(param) != 0 or net.load_model_mem(files.weights) not in (None, 0):
            raise NSRError(f"{self.path}: ncnn cannot load it (not an ncnn .param / .bin pair)")
        if list(net.input_names()) != list(INPUT_BLOBS) or OUTPUT_BLOB not in net.output_names():
            raise NSRError(f"{self.path}: not an nsr-deploy ncnn model (blobs {list(net.input_names())} -> "
                           f"{list(net.output_names())}, expected {list(INPUT_BLOBS)} -> {OUTPUT_BLOB})")
        self.net = net

    def _deactivate(self) -> None:
        if self.net is not None:
            self.net.clear()
        self.net = None

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or valid.shape != (x.shape[0], 1, *x.shape[2:]):
            # ncnn would not refuse a wrong rank; it may crash on one
            raise NSRError(f"ncnn runner wants x [N, C, h, w] and valid [N, 1, h, w], got {x.shape}, {valid.shape}")
        return np.stack([self._one(xi, vi) for xi, vi in zip(x, valid)])

    def _one(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import ncnn

        ex = self.net.create_extractor()
        # copies: a Mat made from an ndarray does not keep its buffer alive (a crash in extract otherwise)
        inputs = (ncnn.Mat(np.ascontiguousarray(x)).clone(), ncnn.Mat(np.ascontiguousarray(valid)).clone())
        for name, mat in zip(INPUT_BLOBS, inputs):
            ex.input(name, mat)
        status, out = ex.extract(OUTPUT_BLOB)
        if status != 0:
            raise NSRError(f"{self.path}: ncnn failed on a {x.shape[1]}x{x.shape[2]} window (status {status})")
        return np.array(out, dtype=np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "device": "vulkan" if self.vulkan else "cpu",
                "feeding": "one patch per extractor call"}
