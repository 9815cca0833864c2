"""CUDA from Python for the TensorRT runner: device facts, one stream, device buffers, copies.

TensorRT's Python API takes raw device pointers and a stream handle; something else must own the
memory. Two providers behind one small interface:

``torch.cuda``   when torch is already imported with CUDA (an app that uses torch anyway), or when
                 cuda-python is missing and torch has CUDA;
``cuda-python``  NVIDIA's ``cuda-python`` runtime bindings (``cuda.bindings.runtime``, or the older
                 ``cuda.cudart``): no torch needed, the lighter choice for apps.

Nothing here is imported at module import: ``unavailable()`` says why CUDA cannot be reached, in words.
Host arrays are copied from / to plain (pageable) numpy memory; the copies are ordered on the stream.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError

PROVIDERS = ("auto", "torch", "cuda-python")


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.9": an engine runs only on GPUs of the capability it was built for
    total_memory_mib: int

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "compute_capability": self.compute_capability,
                "total_memory_mib": self.total_memory_mib}


@dataclass(eq=False)  # buffers are compared by identity
class DeviceBuffer:
    ptr: int
    nbytes: int
    owner: object = None  # what keeps the memory alive (a torch tensor), if anything


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python; raises ImportError when absent
    return cudart


def _torch_with_cuda():
    """torch when it is importable with a usable CUDA device, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _cuda_python_reason() -> str | None:
    """None when cuda-python sees a device; otherwise why not."""
    try:
        cudart = _import_cudart()
    except ImportError:
        return "cuda-python is not installed"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return f"cudaGetDeviceCount failed: {_error_name(cudart, err)}"
    return None if count > 0 else "no CUDA device is visible"


def unavailable(provider: str = "auto") -> str | None:
    """None when a CUDA device can be driven from Python here, else why not (one line)."""
    if provider not in PROVIDERS:
        return f"unknown CUDA provider {provider!r} (choose from {', '.join(PROVIDERS)})"
    cuda_python = _cuda_python_reason() if provider != "torch" else "not asked for"
    if cuda_python is None:
        return None
    if provider == "cuda-python":
        return f"no CUDA device via cuda-python ({cuda_python})"
    if _torch_with_cuda() is not None:
        return None
    if provider == "torch":
        return "no CUDA device via torch (torch is missing or a CPU-only build)"
    return (f"no CUDA device reachable from Python: cuda-python: {cuda_python}; torch: missing or a CPU-only "
            f"build (pip install cuda-python, on a machine with an NVIDIA GPU and its driver)")


def choose_provider(provider: str = "auto") -> str:
    """The provider ``open_device`` will use: torch.cuda if torch is already imported with CUDA, else
    cuda-python when it sees a device, else torch.cuda."""
    if provider != "auto":
        return provider
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        return "torch"
    return "cuda-python" if _cuda_python_reason() is None else "torch"


def open_device(index: int = 0, provider: str = "auto") -> CudaDevice:
    why = unavailable(provider)
    if why:
        raise BackendUnavailable(why)
    chosen = choose_provider(provider)
    return TorchDevice(index) if chosen == "torch" else CudaPythonDevice(index)


class CudaDevice:
    """One device, one stream; buffers it allocates are freed by ``close``."""

    provider = "?"

    def __init__(self, index: int):
        self.index = index
        self._buffers: list[DeviceBuffer] = []

    @property
    def stream_handle(self) -> int:
        raise NotImplementedError

    def info(self) -> DeviceInfo:
        raise NotImplementedError

    def alloc(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def free(self, buf: DeviceBuffer) -> None:
        """Give a buffer back before ``close`` (a runner growing its buffers)."""
        if buf in self._buffers:
            self._buffers.remove(buf)
            self._free(buf)

    def _free(self, buf: DeviceBuffer) -> None:
        raise NotImplementedError

    def to_device(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        raise NotImplementedError

    def to_host(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for buf in self._buffers:
            self._free(buf)
        self._buffers.clear()


class TorchDevice(CudaDevice):
    provider = "torch.cuda"

    def __init__(self, index: int):
        super().__init__(index)
        import torch

        self.torch = torch
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def info(self) -> DeviceInfo:
        props = self.torch.cuda.get_device_properties(self.device)
        return DeviceInfo(self.index, props.name, f"{props.major}.{props.minor}", props.total_memory >> 20)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        tensor = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device=self.device)
        buf = DeviceBuffer(int(tensor.data_ptr()), nbytes, tensor)
        self._buffers.append(buf)
        return buf

    def _free(self, buf: DeviceBuffer) -> None:
        buf.owner = None  # the caching allocator takes the memory back

    def to_device(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        src = self.torch.from_numpy(_bytes_view(host))
        with self.torch.cuda.stream(self.stream):
            buf.owner[:src.numel()].copy_(src, non_blocking=True)

    def to_host(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        dst = self.torch.from_numpy(_bytes_view(host))
        with self.torch.cuda.stream(self.stream):
            dst.copy_(buf.owner[:dst.numel()], non_blocking=True)

    def synchronize(self) -> None:
        self.stream.synchronize()


class CudaPythonDevice(CudaDevice):
    provider = "cuda-python"

    def __init__(self, index: int):
        super().__init__(index)
        self.rt = _import_cudart()
        self._check(self.rt.cudaSetDevice(index), "cudaSetDevice")
        self.stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise NSRError(f"CUDA {what} failed: {_error_name(self.rt, err)}")
        return values[0] if len(values) == 1 else values

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def info(self) -> DeviceInfo:
        props = self._check(self.rt.cudaGetDeviceProperties(self.index), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(self.index, name, f"{props.major}.{props.minor}", int(props.totalGlobalMem) >> 20)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        buf = DeviceBuffer(int(ptr), nbytes)
        self._buffers.append(buf)
        return buf

    def _free(self, buf: DeviceBuffer) -> None:
        self.rt.cudaFree(buf.ptr)

    def to_device(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, kind, self.stream),
                    "cudaMemcpyAsync (to device)")

    def to_host(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, buf.ptr, host.nbytes, kind, self.stream),
                    "cudaMemcpyAsync (to host)")

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        super().close()
        self.rt.cudaStreamDestroy(self.stream)


def _bytes_view(array: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array (what the byte-wise copies move)."""
    if not array.flags.c_contiguous:
        raise ValueError("host arrays must be C-contiguous")
    return array.reshape(-1).view(np.uint8)


def _error_name(cudart, err) -> str:
    try:
        code, name = cudart.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # bindings differ between cuda-python versions
        return str(err)
