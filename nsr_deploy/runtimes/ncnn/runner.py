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
* **CPU by default; Vulkan on request**: ``NcnnRunner(path, vulkan=True, gpu=N)``, or for ``load()`` and the
  CLI the environment variable ``NSR_NCNN_DEVICE=vulkan`` (ncnn's default GPU) / ``vulkan:N`` (GPU index N);
  ``cpu`` or unset: the CPU. An explicit ``vulkan=`` wins over the variable. The GPU keeps fp16 / bf16
  storage and fp16 arithmetic off too (measured on Mesa's lavapipe: fp16 on moves the output by more than
  an 8-bit level; docs/notes/ncnn-vulkan.md). ``describe()`` names the Vulkan device the net runs on.
  The export gate runs on the CPU; Vulkan parity is tests/runtimes/ncnn/test_ncnn_vulkan.py's.
"""

from __future__ import annotations

import os

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner

# pnnx names a traced module's inputs and outputs by position: x, valid -> in0, in1; y -> out0
INPUT_BLOBS = ("in0", "in1")
OUTPUT_BLOB = "out0"
REDUCED_PRECISION_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                             "use_bf16_packed")
DEVICE_ENV = "NSR_NCNN_DEVICE"  # cpu | vulkan | vulkan:N: the device load() and the CLI run ncnn on


def device_from_env() -> tuple[bool, int | None]:
    """(vulkan?, GPU index or None for ncnn's default) from ``NSR_NCNN_DEVICE``; unset means the CPU."""
    value = os.environ.get(DEVICE_ENV, "").strip().lower()
    if value in ("", "cpu"):
        return False, None
    name, _, index = value.partition(":")
    if name == "vulkan" and (not index or index.isdigit()):
        return True, int(index) if index else None
    raise NSRError(f"{DEVICE_ENV}={value!r}: expected cpu, vulkan or vulkan:N (N a GPU index)")


def unavailable() -> str | None:
    """None when usable, else why not."""
    try:
        import ncnn  # noqa: F401
    except ImportError as e:
        return f"ncnn is not installed ({e.name}); pip install 'nsr-deploy[ncnn]'"
    return None


class NcnnRunner(Runner):
    backend = "ncnn"

    def __init__(self, path: str, threads: int | None = None, vulkan: bool | None = None, files=None,
                 gpu: int | None = None):
        super().__init__(path, threads, files)
        if vulkan is None:  # not said: the environment's choice (the CPU when unset)
            vulkan, env_gpu = device_from_env()
            gpu = env_gpu if gpu is None else gpu
        self.vulkan = bool(vulkan)
        self.gpu = gpu  # the Vulkan GPU index; None: ncnn's default GPU
        self.gpu_name: str | None = None
        self.net = None

    def _activate(self) -> None:
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        import ncnn

        files = self.engine_files()  # the .param and its .bin, read once (hashed, in an export folder)
        if files.weights is None:
            raise NSRError(f"{self.path}: an ncnn model is a .param and its .bin")
        net = ncnn.Net()
        if self.vulkan:
            self._select_gpu(ncnn, net)
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
        if self.vulkan:  # what ncnn really bound the net to, not what was asked for
            self.gpu_name = net.vulkan_device().info().device_name()
        self.net = net

    def _select_gpu(self, ncnn, net) -> None:
        count = ncnn.get_gpu_count()
        if count == 0:
            raise BackendUnavailable(f"ncnn sees no Vulkan GPU here; run it on the CPU (vulkan=False, {DEVICE_ENV} "
                                     f"unset or cpu)")
        if self.gpu is None:
            self.gpu = ncnn.get_default_gpu_index()
        if not 0 <= self.gpu < count:
            raise NSRError(f"ncnn sees {count} Vulkan GPU(s) (0..{count - 1}); there is no GPU {self.gpu}")
        net.set_vulkan_device(self.gpu)  # before the param is loaded: layers create their pipelines on it

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
        out = {**super().describe(), "device": "vulkan" if self.vulkan else "cpu",
               "feeding": "one patch per extractor call"}
        if self.vulkan:  # the GPU's name is known once active (ncnn names the device it bound the net to)
            out["vulkan_device"] = {"index": self.gpu, "name": self.gpu_name}
        return out
