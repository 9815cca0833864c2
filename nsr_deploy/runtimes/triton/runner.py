"""Triton Inference Server runner: the patch network runs on the server, tiling stays on the client.

Same interface as every runner (:class:`~nsr_deploy.runtimes.base.Runner`), so an
:class:`~nsr_deploy.runtimes.engine.Engine` restores whole images through a server exactly as it
does with a local engine::

    manifest = read_manifest("repo/sr-x2_onnx")           # the model folder's nsr.json
    with Engine(TritonRunner("localhost:8001", "sr-x2_onnx"), manifest_config(manifest)) as engine:
        big = engine.restore(image)

``url`` picks the protocol: ``host:port`` or ``grpc://host:port`` speaks gRPC (Triton's port 8001),
``http://host:port`` (or ``https://``) speaks HTTP/REST (port 8000). On activation the runner asks
the server for the model's config: a non-batching model (``max_batch_size: 0``, the ``grouped``
conv form) fixes the patch batch, which :class:`Runner` pads to; a batching one bounds the patches
per request, and larger calls are split here.
"""

from __future__ import annotations

import threading

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner

INPUTS = ("x", "valid")
OUTPUT = "y"


def unavailable() -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as e:
        return f"tritonclient is not installed ({e.name}); pip install 'nsr-deploy[serve]'"
    return None


def split_url(url: str) -> tuple[str, str, bool]:
    """``url`` -> (protocol, host:port, ssl)."""
    for scheme, protocol, ssl in (("grpc://", "grpc", False), ("http://", "http", False),
                                  ("https://", "http", True)):
        if url.startswith(scheme):
            return protocol, url[len(scheme):].rstrip("/"), ssl
    if "://" in url:
        raise NSRError(f"Triton url {url!r}: use host:port (gRPC), grpc://, http:// or https://")
    return "grpc", url.rstrip("/"), False


def client_module(protocol: str):
    why = unavailable()
    if why:
        raise BackendUnavailable(why)
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    return module


def build_inputs(module, x: np.ndarray, valid: np.ndarray) -> list:
    """The request's ``InferInput`` objects: names, shapes and FP32 data as the model config says."""
    inputs = []
    for name, array in zip(INPUTS, (x, valid)):
        array = np.ascontiguousarray(array, dtype=np.float32)
        tensor = module.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def build_outputs(module) -> list:
    return [module.InferRequestedOutput(OUTPUT)]


def batch_limits(config: dict) -> tuple[int | None, int | None]:
    """(fixed patch batch, most patches per request) from a model config as JSON (either protocol).

    ``max_batch_size: 0`` with a positive first dim of ``x``: the model takes exactly that batch.
    ``max_batch_size > 0``: Triton batches, any request of up to that many patches.
    """
    max_batch = int(config.get("max_batch_size", 0) or 0)
    if max_batch > 0:
        return None, max_batch
    for tensor in config.get("input", []):
        if tensor.get("name") == INPUTS[0]:
            first = int(tensor.get("dims", [-1])[0])
            return (first if first > 0 else None), None
    return None, None


class TritonRunner(Runner):
    backend = "triton"

    def __init__(self, url: str, model_name: str, model_version: str = "", static_batch: int | None = None,
                 timeout_s: float = 60.0):
        super().__init__(f"{url}/{model_name}", None)
        self.url, self.model_name, self.model_version = url, model_name, model_version
        self.protocol, self.address, self.ssl = split_url(url)
        self.static_batch = static_batch
        self.max_batch: int | None = None
        self.timeout_s = timeout_s
        self.client = None
        self.module = None
        # the HTTP client is gevent-based and not safe across threads; gRPC's is
        self._call_lock = threading.Lock() if self.protocol == "http" else None

    # -- lifecycle ------------------------------------------------------------------------
    def _activate(self) -> None:
        self.module = client_module(self.protocol)
        from tritonclient.utils import InferenceServerException

        try:
            self.client = self._connect()
            ready = self.client.is_model_ready(self.model_name, self.model_version)
            if not ready:
                raise NSRError(f"Triton at {self.url}: model {self.model_name!r} is not ready "
                               f"(is it in the repository and loaded?)")
            config = self._model_config()
        except (InferenceServerException, OSError) as e:
            raise NSRError(f"cannot reach Triton at {self.url}: {str(e).splitlines()[0][:200]}") from None
        fixed, self.max_batch = batch_limits(config)
        if self.static_batch is None:
            self.static_batch = fixed

    def _connect(self):
        if self.protocol == "http":
            return self.module.InferenceServerClient(self.address, ssl=self.ssl, connection_timeout=self.timeout_s,
                                                     network_timeout=self.timeout_s)
        return self.module.InferenceServerClient(self.address)

    def _model_config(self) -> dict:
        config = self.client.get_model_config(self.model_name, self.model_version, as_json=True) \
            if self.protocol == "grpc" else self.client.get_model_config(self.model_name, self.model_version)
        return config.get("config", config)  # gRPC wraps it in a ModelConfigResponse

    def _deactivate(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None

    # -- inference ------------------------------------------------------------------------
    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        step = self.max_batch or x.shape[0]
        if x.shape[0] <= step:
            return self._request(x, valid)
        return np.concatenate([self._request(x[i:i + step], valid[i:i + step]) for i in range(0, x.shape[0], step)])

    def _request(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        inputs, outputs = build_inputs(self.module, x, valid), build_outputs(self.module)
        try:
            if self._call_lock is None:
                result = self.client.infer(self.model_name, inputs, self.model_version, outputs,
                                           client_timeout=self.timeout_s)
            else:
                with self._call_lock:
                    result = self.client.infer(self.model_name, inputs, self.model_version, outputs)
        except (InferenceServerException, OSError) as e:
            raise NSRError(f"Triton {self.model_name!r} at {self.url}: {str(e).splitlines()[0][:200]}") from None
        return result.as_numpy(OUTPUT)

    def describe(self) -> dict:
        return {**super().describe(), "url": self.url, "model": self.model_name, "protocol": self.protocol,
                "max_batch": self.max_batch}
