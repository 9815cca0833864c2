"""ExecuTorch runner for ``model.pte`` (the ``executorch`` package's Python runtime, XNNPACK delegate).

The one runner that brings torch in: ExecuTorch's Python bindings are linked against libtorch and take
and return ``torch.Tensor`` only (a numpy array is refused: "Unsupported python type"), and
``executorch.runtime`` imports torch itself. So torch is imported here, inside :meth:`_activate`, only
when this backend is used; every other runner stays torch-free. Apps on devices embed the C++
runtime instead, which needs no torch (the ``.pte`` file does not).

Choices, and why:

* **One patch per call.** The file is lowered at batch 1 with dynamic height and width (see
  :mod:`nsr_deploy.exporters.executorch.target`); the runner loops over a batch itself, so to its callers it
  takes any number of windows (``static_batch`` None, as ncnn's).
* **Threads.** XNNPACK's thread pool is process-wide in the Python runtime: ``threads`` resizes it for
  every ExecuTorch runner in the process.
* **One call at a time.** A loaded ``Method`` keeps its inputs and outputs in planned memory, so calls
  from several threads are serialised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner

METHOD = "forward"
FLOAT16 = 5  # ExecuTorch's ScalarType code of Half, in TensorInfo.dtype()
# torchao (which ExecuTorch imports) logs the optional CUDA kernels it cannot load, torch its pytree
# deprecations; none is about the model, and a failed command must stay one ``error:`` line.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet():
    """ExecuTorch's imports and lowering without their unrelated log lines and warnings."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def native_stderr_silenced():
    """The runtime's C++ log lines (CPU probing, thread pool size: written to file descriptor 2) dropped while
    a file loads; what goes wrong still reaches the caller as the bindings' exception, as one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def unavailable() -> str | None:
    """None when usable, else why not."""
    try:
        import torch  # noqa: F401 (ExecuTorch's Python bindings link libtorch)
    except ImportError:
        return ("executorch's Python runtime needs torch (its bindings link libtorch); "
                "pip install 'nsr-deploy[executorch]'")
    try:
        with quiet():
            import executorch.runtime  # noqa: F401 (imports torch: its bindings link libtorch)
    except ImportError as e:
        return f"executorch is not installed ({e.name}); pip install 'nsr-deploy[executorch]'"
    return None


def load_method(path: str, threads: int | None, data: bytes | None = None):
    """The ``forward`` method of a .pte file, loaded from ``data`` (its bytes, read once and checked) or
    else from ``path``; ``threads`` resizes XNNPACK's (process-wide) pool."""
    why = unavailable()
    if why:
        raise BackendUnavailable(why)
    with quiet():
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

    try:
        with native_stderr_silenced():
            if threads and portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
            program = Runtime.get().load_program(path if data is None else data)
            if METHOD not in program.method_names:
                raise NSRError(f"{path}: not an nsr-deploy ExecuTorch model (no method {METHOD!r})")
            return program.load_method(METHOD)
    except NSRError:
        raise
    except Exception as e:  # noqa: BLE001 - the bindings raise RuntimeError / ValueError alike
        raise NSRError(f"{path}: ExecuTorch cannot load it ({str(e).strip()[:160] or type(e).__name__})") from None


class ExecuTorchRunner(Runner):
    backend = "executorch"

    def __init__(self, path: str, threads: int | None = None, files=None):
        super().__init__(path, threads, files)
        self.method = None
        self.max_side: tuple[int, int] | None = None
        self.half = False
        self._call_lock = threading.Lock()

    def _activate(self) -> None:
        self.method = load_method(self.path, self.threads, self.engine_files().engine)
        meta = self.method.metadata
        if meta.num_inputs() != 2 or meta.num_outputs() != 1:
            raise NSRError(f"{self.path}: not an nsr-deploy ExecuTorch model ({meta.num_inputs()} inputs, "
                           f"{meta.num_outputs()} outputs; expected x, valid -> y)")
        x = meta.input_tensor_meta(0)
        sizes = tuple(x.sizes())
        if len(sizes) != 4 or sizes[0] != 1:
            raise NSRError(f"{self.path}: not an nsr-deploy ExecuTorch model (input x {list(sizes)}, expected "
                           "[1, C, h, w])")
        self.max_side = sizes[2], sizes[3]  # the upper bounds the file was lowered with
        self.half = x.dtype() == FLOAT16
        self.precision = "fp16" if self.half else "fp32"

    def _deactivate(self) -> None:
        self.method = None

    def max_window(self) -> tuple[int, int] | None:
        return self.max_side

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import torch

        if x.ndim != 4 or valid.shape != (x.shape[0], 1, *x.shape[2:]):
            raise NSRError(f"executorch runner wants x [N, C, h, w] and valid [N, 1, h, w], got {x.shape}, "
                           f"{valid.shape}")
        h, w = x.shape[2:]
        if h > self.max_side[0] or w > self.max_side[1]:
            raise NSRError(f"{self.path}: a {h}x{w} window is larger than the {self.max_side[0]}x{self.max_side[1]} "
                           f"this model was lowered for (export it again with a larger --max-side)")
        dtype = torch.float16 if self.half else torch.float32
        xs, vs = torch.from_numpy(x).to(dtype), torch.from_numpy(valid).to(dtype)
        outs = []
        with self._call_lock:
            for i in range(x.shape[0]):
                outs.append(self.method.execute([xs[i:i + 1], vs[i:i + 1]])[0].float().numpy().copy())
        return np.concatenate(outs)

    def describe(self) -> dict:
        return {**super().describe(), "device": "cpu (XNNPACK)", "feeding": "one patch per call",
                "max_side": self.max_side}
