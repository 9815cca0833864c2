"""TensorRT runner for ``model.engine``: one execution context, one CUDA stream. Imports no torch.

    with TrtRunner("out/model.engine") as runner:        # or nsr_deploy.runtimes.load("out/")
        y = runner.infer(x, valid)                        # float32 NCHW in, float32 NCHW out

Choices, and why:

* **Written against TensorRT 10.x and 11.x's documented Python API** (``Runtime.deserialize_cuda_engine``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``: the same in both). Other majors
  are refused with the version found (:mod:`.compat` holds what differs between 10 and 11).
* **Device memory** comes from :mod:`.cuda_device` (torch.cuda or cuda-python; torch only when it is
  already imported or the only way in). Buffers grow to the largest call seen and are reused.
* **Profiles are read from the engine**, not the manifest: each call picks the first optimisation
  profile whose tile sizes cover it (switching profile only when needed) and splits a patch batch
  larger than the profile allows. Shapes no profile covers are refused with the ranges that exist.
* **An engine runs only where it was built**: same TensorRT version, a GPU of the same compute
  capability. Loading one from elsewhere fails with TensorRT's own reason and, when an ``nsr.json``
  sits beside the engine, the GPU and version it was built with.
* ``infer`` is thread-safe: calls share one context and one stream, so they are serialised.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.core.safe_read import read_json
from nsr_deploy.runtimes.base import Runner

IO_NAMES = ("x", "valid", "y")


def tensorrt_unavailable() -> str | None:
    """None when TensorRT 10.x or 11.x imports here, else why not."""
    not_installed = ("TensorRT is not installed (no module named 'tensorrt'): pip install 'tensorrt<12' (10.x or "
                     "11.x) on a machine with an NVIDIA GPU and driver")
    try:
        import tensorrt as trt
    except ImportError as e:
        if e.name == "tensorrt":
            return not_installed
        return f"TensorRT cannot be loaded ({str(e).splitlines()[0][:160]})"
    except Exception as e:  # a broken install: missing libnvinfer, driver mismatch
        return f"TensorRT cannot be loaded ({str(e).splitlines()[0][:160]})"
    if getattr(trt, "__file__", None) is None:
        # A bare folder named tensorrt on sys.path imports as an empty namespace package.
        return not_installed
    from nsr_deploy.runtimes.tensorrt.compat import version_refusal

    return version_refusal(getattr(trt, "__version__", "0"))


def unavailable() -> str | None:
    """None when engines can run here (TensorRT 10.x or 11.x and a CUDA device), else why not."""
    from nsr_deploy.runtimes.tensorrt.cuda_device import unavailable as cuda_unavailable

    return tensorrt_unavailable() or cuda_unavailable()


# -- profiles, as the engine states them ------------------------------------------------------------------
@dataclass(frozen=True)
class EngineProfile:
    """What one optimisation profile of a built engine accepts for ``x`` ``[N, C, h, w]``."""

    index: int
    batch: tuple[int, int]
    height: tuple[int, int]
    width: tuple[int, int]

    def covers_tile(self, h: int, w: int) -> bool:
        return self.height[0] <= h <= self.height[1] and self.width[0] <= w <= self.width[1]

    def describe(self) -> str:
        return (f"profile {self.index}: batch {self.batch[0]}-{self.batch[1]}, "
                f"{self.height[0]}-{self.height[1]} x {self.width[0]}-{self.width[1]}")


def select_profile(profiles: list[EngineProfile], n: int, h: int, w: int) -> EngineProfile:
    """The first profile that takes ``h x w`` tiles, preferring one that takes all ``n`` at once."""
    fitting = [p for p in profiles if p.covers_tile(h, w) and p.batch[0] <= n]
    if not fitting:
        ranges = "; ".join(p.describe() for p in profiles)
        raise NSRError(f"this TensorRT engine takes no batch of {n} {h}x{w} tiles ({ranges}); "
                       f"re-export with profiles that cover it")
    whole = [p for p in fitting if n <= p.batch[1]]
    return whole[0] if whole else max(fitting, key=lambda p: p.batch[1])


def read_profiles(engine) -> list[EngineProfile]:
    """The engine's profiles for input ``x`` (min and max of batch, height, width)."""
    out = []
    for index in range(engine.num_optimization_profiles):
        low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape("x", index))
        out.append(EngineProfile(index, (low[0], high[0]), (low[2], high[2]), (low[3], high[3])))
    return out


def built_with(engine_path: str | Path) -> dict:
    """What the export recorded about where this engine was built (empty when no nsr.json is beside it)."""
    manifest = Path(engine_path).parent / "nsr.json"
    if not manifest.exists():
        return {}
    try:
        doc = read_json(manifest)
    except NSRError:
        return {}
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), dict):
        return {}
    entry = doc.get("targets", {}).get("tensorrt", {})
    return {k: entry[k] for k in ("precision", "tensorrt", "gpu", "compute_capability") if k in entry}


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str, threads: int | None = None, cuda_provider: str = "auto", device: int = 0,
                 files=None):
        super().__init__(path, threads, files)  # threads: CPU threads do not apply to a GPU engine
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        self.cuda_provider = cuda_provider
        self.device_index = device
        self.recorded = built_with(path)
        self.precision = self.recorded.get("precision", "fp32")
        self.device = None
        self.device_info = None
        self.engine = None
        self.context = None
        self.profiles: list[EngineProfile] = []
        self.load_seconds: float | None = None
        self._active_profile: int | None = None
        self._buffers: dict = {}
        self._run_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def _activate(self) -> None:
        from nsr_deploy.runtimes.tensorrt.cuda_device import open_device

        t0 = time.perf_counter()
        self.device = open_device(self.device_index, self.cuda_provider)
        try:
            self.device_info = self.device.info()
            self.engine = self._deserialize()
            self._prepare()
        except BaseException:
            self._deactivate()  # give the stream back; activation did not happen
            raise
        self.load_seconds = time.perf_counter() - t0

    def _prepare(self) -> None:
        """Check the I/O contract, read the profiles, create the execution context."""
        missing = [n for n in IO_NAMES if n not in self._io_names()]
        if missing:
            raise NSRError(f"{self.path}: the engine lacks tensor(s) {', '.join(missing)} of the nsr-deploy contract")
        self.profiles = read_profiles(self.engine)
        first = tuple(self.engine.get_tensor_shape("x"))[0]
        self.static_batch = int(first) if first > 0 else None
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise NSRError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self._active_profile = 0

    def _deserialize(self):
        import tensorrt as trt

        from nsr_deploy.runtimes.tensorrt.logger import collecting_logger

        logger = collecting_logger(trt)
        self._logger = logger  # TensorRT keeps a pointer to it
        self._runtime = trt.Runtime(logger)
        data = self.engine_files().engine  # read once (hashed, in an export folder)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            where = self.recorded
            origin = (f"; it was built with TensorRT {where.get('tensorrt')} on {where.get('gpu')} "
                      f"(compute capability {where.get('compute_capability')}), this is TensorRT {trt.__version__} on "
                      f"{self.device_info.name} ({self.device_info.compute_capability})") if where else ""
            raise NSRError(f"{self.path}: TensorRT cannot load this engine ({logger.summary()}){origin}; "
                           f"an engine runs only where it was built: re-export it here")
        return engine

    def _io_names(self) -> list[str]:
        return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _deactivate(self) -> None:
        self.context = None
        self.engine = None
        self._buffers.clear()
        if self.device is not None:
            self.device.synchronize()
            self.device.close()
            self.device = None

    # -- inference ---------------------------------------------------------------------------
    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        n, _, h, w = x.shape
        profile = select_profile(self.profiles, n, h, w)
        if n > profile.batch[1]:  # more patches than the profile takes: run them in slices
            step = profile.batch[1]
            return np.concatenate([self._infer(x[i:i + step], valid[i:i + step]) for i in range(0, n, step)])
        with self._run_lock:
            return self._run(profile.index, x, valid)

    def _run(self, profile: int, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import tensorrt as trt

        ctx, dev = self.context, self.device
        if profile != self._active_profile:
            if not ctx.set_optimization_profile_async(profile, dev.stream_handle):
                raise NSRError(f"TensorRT refused optimisation profile {profile}")
            self._active_profile = profile
        for name, host in (("x", x), ("valid", valid)):
            host = np.ascontiguousarray(host, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            if not ctx.set_input_shape(name, host.shape):
                raise NSRError(f"TensorRT refused input {name} of shape {list(host.shape)}")
            buf = self._buffer(name, host.nbytes)
            dev.to_device(buf, host)
            ctx.set_tensor_address(name, buf.ptr)
        out = np.empty(tuple(ctx.get_tensor_shape("y")), dtype=trt.nptype(self.engine.get_tensor_dtype("y")))
        out_buf = self._buffer("y", out.nbytes)
        ctx.set_tensor_address("y", out_buf.ptr)
        if not ctx.execute_async_v3(dev.stream_handle):
            raise NSRError(f"TensorRT failed to run the engine on {list(x.shape)} ({self._logger.summary()})")
        dev.to_host(out, out_buf)
        dev.synchronize()
        return out.astype(np.float32, copy=False)

    def _buffer(self, name: str, nbytes: int):
        """The device buffer for ``name``, grown when a call needs more than it holds."""
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.device.free(buf)
            buf = self._buffers[name] = self.device.alloc(nbytes)
        return buf

    def max_window(self) -> tuple[int, int] | None:
        """The largest window a profile takes (the profiles were built for the export's tile sizes)."""
        if not self.profiles:
            return None
        widest = max(self.profiles, key=lambda p: p.height[1] * p.width[1])
        return widest.height[1], widest.width[1]

    def describe(self) -> dict:
        d = super().describe()
        d.update({"device": self.device_info.name if self.device_info else None,
                  "gpu": self.device_info.as_dict() if self.device_info else None,
                  "cuda_provider": self.device.provider if self.device else self.cuda_provider,
                  "profiles": [p.describe() for p in self.profiles],
                  "built_with": self.recorded or None,
                  "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3)})
        return d
