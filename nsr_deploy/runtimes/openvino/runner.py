"""OpenVINO (CPU plugin) runner for ``model.xml`` + ``model.bin``. Imports no torch.

Choices, and why:

* **Execution precision is pinned to f32** (``INFERENCE_PRECISION_HINT``). OpenVINO separates how an
  IR stores weights from how a device computes: an fp16 IR is decompressed and computed in f32 on
  CPUs without native half support, but CPUs with AMX / avx512_bf16 default to bf16 *execution*, which
  would put the sparsity softmax and the kernel mixing in bf16 and make parity depend on the machine.
  Pinning f32 keeps both in f32 everywhere; int8 layers still run in int8 (the hint only governs
  floating-point ops). A **bf16 engine** (``--precision bf16``: the IR and the manifest say bf16) is compiled
  with the bf16 hint where the CPU has AVX-512 BF16 or AMX (its marked routing ops stay f32), and in f32
  elsewhere (slower, more exact; ``describe()`` says why). ``execution_precision`` overrides either.
* **Model cache** (``CACHE_DIR``) in ``~/.cache/nsr-deploy/openvino`` (``$XDG_CACHE_HOME`` honoured;
  ``$NSR_DEPLOY_CACHE`` replaces the ``nsr-deploy`` root, ``off`` disables): a second load imports the
  compiled blob instead of compiling. We compile from the ``ov.Model`` rather than the file path: the
  cache key is then a hash of the model itself, so it survives copying the export folder elsewhere.
* **Shapes**: the ``grouped`` conv form has its patch batch baked into the graph (ONNX ``Conv.group``),
  so it stays static and the base class pads / splits batches to it. The other forms are dynamic in
  batch and size; ``tile_batch`` and ``shape`` fix them at load time (a static shape compiles to
  faster kernels), without re-exporting.
* **Threads**: ``INFERENCE_NUM_THREADS`` when given; the latency / throughput hint chooses streams.
  ``infer`` is thread-safe: each call borrows its own infer request from a pool. In throughput mode a
  dynamic-batch call is split over the streams and run concurrently.
"""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import numpy as np

from nsr_deploy.core.cache import CACHE_ENV, cache_root
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.core.safe_read import parse_json
from nsr_deploy.runtimes.base import Runner

CACHE_OFF = ("", "0", "off", "none", "false")
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
EXECUTION_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
RT_INFO_ROOT = "nsr_deploy"  # our keys inside the IR's rt_info: precision, manifest (the I/O contract)


def unavailable() -> str | None:
    """None when usable, else why not."""
    try:
        import nsr_deploy.runtimes.openvino.quiet_import  # noqa: F401 (OpenVINO, its telemetry off)
    except ImportError as e:
        return f"openvino is not installed ({e.name}); pip install 'nsr-deploy[runtime]'"
    return None


def default_cache_dir() -> Path | None:
    """Where compiled blobs are cached, or None when caching is switched off."""
    root = os.environ.get(CACHE_ENV)
    if root is not None and root.strip().lower() in CACHE_OFF:
        return None
    return cache_root() / "openvino"


def ir_metadata(model) -> dict:
    """Our entries in an ``ov.Model``'s rt_info: ``precision`` and the ``manifest`` I/O contract."""
    out = {}
    for key in ("precision", "manifest"):
        if model.has_rt_info([RT_INFO_ROOT, key]):
            out[key] = model.get_rt_info([RT_INFO_ROOT, key]).astype(str)
    if "manifest" in out:
        try:
            out["manifest"] = parse_json(out["manifest"], "the IR's manifest")
        except NSRError:
            del out["manifest"]
    return out


def read_ir(core, xml: bytes, weights: bytes):
    """An ``ov.Model`` from the IR's bytes: OpenVINO reads nothing from disk (no second look at a path
    that may have been swapped since its bytes were checked)."""
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    return core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, np.uint8)))


def read_ir_manifest(files) -> dict | None:
    """The I/O contract embedded in an IR (so a bare ``model.xml`` is self-describing), or None;
    ``files``: its :class:`~.contract.EngineFiles`, or the path of a bare IR (read once here)."""
    from nsr_deploy.runtimes.contract import read_engine_files
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    if isinstance(files, (str, Path)):
        files = read_engine_files(files)

    return ir_metadata(read_ir(ov.Core(), files.engine, files.weights or b"")).get("manifest")


def _precision_from_manifest(path: Path) -> str | None:
    from nsr_deploy.runtimes.manifest import MANIFEST, read_manifest

    if not (path.parent / MANIFEST).exists():
        return None
    try:
        target = read_manifest(path.parent).get("targets", {}).get("openvino", {})
    except NSRError:
        return None  # a broken manifest beside the file: the IR's own metadata still says
    return target.get("precision") if target.get("file") == path.name else None


def _precision_from_weights(model) -> str:
    """For an IR without our metadata: int8 if it holds quantizers, fp16 if its weights are half."""
    types = {op.get_type_name() for op in model.get_ops()}
    if "FakeQuantize" in types:
        return "int8"
    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    return "fp16" if any(c.get_output_element_type(0).get_type_name() == "f16" for c in consts) else "fp32"


class OvRunner(Runner):
    backend = "openvino"

    def __init__(self, path: str, threads: int | None = None, hint: str = "latency", tile_batch: int | None = None,
                 shape: tuple[int, int] | None = None, cache: bool = True, execution_precision: str | None = None,
                 device: str = "CPU", files=None):
        super().__init__(path, threads, files)
        if hint not in HINTS:
            raise NSRError(f"unknown performance hint {hint!r} (choose from {', '.join(HINTS)})")
        if execution_precision is not None and execution_precision not in EXECUTION_PRECISIONS:
            raise NSRError(f"unknown execution precision {execution_precision!r} "
                           f"(choose from {', '.join(EXECUTION_PRECISIONS)})")
        if tile_batch is not None and tile_batch < 1:
            raise NSRError(f"tile batch must be >= 1, got {tile_batch}")
        if shape is not None and (len(shape) != 2 or min(shape) < 1):
            raise NSRError(f"shape must be (height, width) >= 1, got {shape}")
        self.hint = hint
        self.tile_batch = tile_batch
        self.shape = tuple(shape) if shape else None
        self.cache_dir = default_cache_dir() if cache else None
        self.execution_precision = execution_precision or "f32"  # settled at load for a bf16 engine
        self._precision_asked = execution_precision
        self.execution_note: str | None = None
        self.device = device
        self.precision = _precision_from_manifest(Path(path)) or "unknown until loaded"
        self.load_seconds: float | None = None
        self.loaded_from_cache: bool | None = None
        self.compiled = None
        self._requests: queue.SimpleQueue | None = None
        self._streams = 1

    # -- loading ---------------------------------------------------------------------------
    def compile_config(self) -> dict:
        config = {"PERFORMANCE_HINT": HINTS[self.hint],
                  "INFERENCE_PRECISION_HINT": EXECUTION_PRECISIONS[self.execution_precision]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def _activate(self) -> None:
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        from nsr_deploy.runtimes.openvino.quiet_import import ov

        path = Path(self.path)
        files = self.engine_files()  # the .xml and the .bin it names, read once (hashed, in an export folder)
        if files.weights is None:
            raise NSRError(f"{path}: an OpenVINO IR needs its weights file (.bin)")
        self._ensure_cache_dir()
        t0 = time.perf_counter()
        core = ov.Core()
        try:
            model = read_ir(core, files.engine, files.weights)
        except RuntimeError as e:
            raise NSRError(f"{path}: OpenVINO cannot read it ({_error_summary(e)})") from None
        self.precision = _precision_from_manifest(path) or ir_metadata(model).get("precision") \
            or _precision_from_weights(model)
        self._settle_execution_precision()
        self._reshape(model)
        try:
            self.compiled = core.compile_model(model, self.device, self.compile_config())
        except RuntimeError as e:
            raise NSRError(f"{path}: OpenVINO cannot compile it for {self.device} ({_error_summary(e)})") from None
        self.load_seconds = time.perf_counter() - t0
        self.loaded_from_cache = bool(self.cache_dir) and bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        batch = self.compiled.input("x").get_partial_shape()[0]
        self.static_batch = batch.get_length() if batch.is_static else None
        self._streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = queue.SimpleQueue()

    def _settle_execution_precision(self) -> None:
        """bf16 for a bf16 engine on a CPU that runs it natively, else f32 (unless the caller chose)."""
        if self._precision_asked is not None or self.precision != "bf16":
            return
        from nsr_deploy.runtimes.openvino.cpu_bf16 import bf16_unavailable

        why = bf16_unavailable()
        self.execution_precision = "f32" if why else "bf16"
        self.execution_note = f"bf16 engine computed in f32 here: {why}" if why else None

    def _ensure_cache_dir(self) -> None:
        """An unwritable cache folder costs speed, not correctness: run without the cache."""
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            self.cache_dir = None

    def _reshape(self, model) -> None:
        """Fix the batch (``tile_batch``) and / or the patch size (``shape``) the engine compiles for."""
        if self.tile_batch is None and self.shape is None:
            return
        dims = model.input("x").get_partial_shape()
        batch_fixed = dims[0].is_static
        if self.tile_batch is not None and batch_fixed and dims[0].get_length() != self.tile_batch:
            raise NSRError(f"{self.path}: this engine's patch batch is fixed at {dims[0].get_length()} (conv form "
                           f"'grouped': ONNX Conv.group is set at export); re-export with --patch-batch "
                           f"{self.tile_batch} or use the 'matmul' / 'dense-mix' form to choose it at load time")
        batch = dims[0].get_length() if batch_fixed else (self.tile_batch or -1)
        h, w = self.shape or (-1, -1)
        channels = dims[1].get_length()
        try:
            model.reshape({"x": [batch, channels, h, w], "valid": [batch, 1, h, w]})
        except RuntimeError as e:
            raise NSRError(f"{self.path}: cannot reshape to batch {batch}, {h}x{w} ({_error_summary(e)})") from None

    def _deactivate(self) -> None:
        self.compiled = None
        self._requests = None

    # -- inference -------------------------------------------------------------------------
    def _borrow(self):
        try:
            return self._requests.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def _run_one(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        request = self._borrow()
        try:
            request.infer({"x": x, "valid": valid})
            return request.get_output_tensor(0).data.copy()
        except RuntimeError as e:
            raise NSRError(f"OpenVINO inference failed on input {list(x.shape)} ({_error_summary(e)})") from None
        finally:
            self._requests.put(request)

    def _run_concurrently(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Throughput mode: one slice of the batch per stream, all in flight at once."""
        chunks = np.array_split(np.arange(x.shape[0]), min(self._streams, x.shape[0]))
        requests = [self._borrow() for _ in chunks]
        try:
            for request, idx in zip(requests, chunks):
                request.start_async({"x": x[idx[0]:idx[-1] + 1], "valid": valid[idx[0]:idx[-1] + 1]})
            outs = []
            for request in requests:
                request.wait()
                outs.append(request.get_output_tensor(0).data.copy())
            return np.concatenate(outs)
        except RuntimeError as e:
            raise NSRError(f"OpenVINO inference failed on input {list(x.shape)} ({_error_summary(e)})") from None
        finally:
            for request in requests:
                self._requests.put(request)

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.shape is not None and tuple(x.shape[2:]) != self.shape:
            raise NSRError(f"this engine was compiled for {self.shape[0]}x{self.shape[1]} patches, "
                           f"got {x.shape[2]}x{x.shape[3]}")
        if self.hint == "throughput" and self.static_batch is None and self._streams > 1 and x.shape[0] > 1:
            return self._run_concurrently(x, valid)
        return self._run_one(x, valid)

    # -- introspection ---------------------------------------------------------------------
    def runtime_ops(self) -> list[dict]:
        """What the plugin really runs: ``{name, type, precision, original}`` per executed node, where
        ``original`` lists the IR ops fused into it."""
        if not self._active:
            self.activate()
        out = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            original = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
            out.append({"name": op.get_friendly_name(), "type": info["layerType"].astype(str),
                        "precision": info["runtimePrecision"].astype(str),
                        "original": [n for n in original.split(",") if n] or [op.get_friendly_name()]})
        return out

    def describe(self) -> dict:
        d = super().describe()
        d.update({"device": self.device, "hint": self.hint, "execution_precision": self.execution_precision,
                  "execution_note": self.execution_note,
                  "tile_batch": self.tile_batch, "shape": list(self.shape) if self.shape else None,
                  "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                  "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
                  "loaded_from_cache": self.loaded_from_cache})
        return d


def _error_summary(e: Exception) -> str:
    lines = [s for s in str(e).splitlines() if s.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]
