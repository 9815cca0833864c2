"""ONNX Runtime (CPU execution provider) runner.

A portable model is specialised at load into ONNX Runtime's blocked NCHWc form for this CPU where it
can be (:mod:`.specialise`), else run as it is with a warning that says why. Calls with fewer
patches than the engine's batch run on a batch-1 twin instead of being padded with copies (a whole
small image is one patch: padded to 16 it would cost 16 times its pixels): the NCHWc one built at load,
else the export's ``model-b1.onnx`` (``targets.onnx.batch_one``).
"""

from __future__ import annotations

import warnings

import numpy as np

from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes.base import Runner


class SpecialisationWarning(UserWarning):
    """The portable model runs unspecialised (slower, same results)."""


def unavailable() -> str | None:
    """None when usable, else why not."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed ({e.name}); pip install 'nsr-deploy[runtime]'"
    return None


def _portable_batch(data: bytes) -> tuple[int | None, bool]:
    """The model's fixed patch batch (None: dynamic) and whether it is a portable NSR model."""
    try:
        import onnx
    except ImportError:
        return None, False
    try:
        model = onnx.load_from_string(data)
        dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    except Exception:  # noqa: BLE001 - unreadable: not specialised; loading it says why in one line
        return None, False
    props = {p.key for p in model.metadata_props}
    portable = "nsr_manifest" in props and "nsr_nchwc_block" not in props
    return (dim.dim_value if dim.HasField("dim_value") else None), portable


class OrtRunner(Runner):
    backend = "onnxruntime"
    DEFAULT_BATCH = 16  # the blocked batch of a dynamic-batch portable model (the engine's tile batch)

    def __init__(self, path: str, threads: int | None = None, optimization: str = "all", specialise: bool = True,
                 files=None):
        super().__init__(path, threads, files)
        self.optimization = optimization
        self.specialise = specialise
        self.session = None
        self.single = None  # batch-1 session for short calls, or None (pad them)
        self.session_batch: int | None = None  # the fixed batch of the session that runs (specialised or not)
        self.specialisation: dict | None = None

    def _session(self, model):
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
        # The memory pattern plans one block for the second run while the first run's chunks stay in the
        # arena: twice the activation memory (a 64x64-patch matmul layer: 400 MB instead of 200), no
        # measurable speed-up on these graphs.
        opts.enable_mem_pattern = False
        try:
            return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise NSRError(f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None

    def _activate(self) -> None:
        why = unavailable()
        if why:
            raise BackendUnavailable(why)
        data = self.engine_files().engine  # read once; never opened again by path
        batch, portable = _portable_batch(data)
        if self.specialise and portable:
            self._activate_specialised(data, batch)
        else:
            self.session = self._session(data)
        shape = self.session.get_inputs()[0].shape
        self.session_batch = shape[0] if isinstance(shape[0], int) else None
        # the file's own batch, not the specialised session's: the tiling plan (and so every output
        # pixel) must not depend on whether this CPU could specialise the model
        self.static_batch = batch if self.specialise and portable else self.session_batch
        self._check_nchwc_block()
        if self.single is None and (self.session_batch or 0) > 1:
            self.single = self._batch_one_session()

    def _activate_specialised(self, data: bytes, batch: int | None) -> None:
        import functools

        from nsr_deploy.runtimes.onnxruntime.specialise import session, specialise

        portable = functools.cache(lambda: session(data, self.threads))  # built once, only on a cache miss
        main = specialise(data, batch or self.DEFAULT_BATCH, self.threads, portable)
        self.specialisation = main.as_dict()
        if main.why and main.quiet:
            self.session = self._session(data)
            return
        if main.why:
            warnings.warn(f"{self.path}: running the portable model, not ONNX Runtime's NCHWc form: {main.why}",
                          SpecialisationWarning, stacklevel=4)
            self.session = self._session(data)
            return
        self.session = self._cached_session(main, data, portable) or self._session(data)
        if main.batch > 1:
            single = specialise(data, 1, self.threads, portable)
            if single.why is None:
                self.single = self._cached_session(single, data, portable)

    def _batch_one_session(self):
        """The export's batch-1 twin of the file (``targets.onnx.batch_one``, hashed with the folder) for short
        calls, or None: a portable run (no NCHWc kernels here) then pads no call with copies either."""
        data = self.engine_files().batch_one
        if data is None:
            return None
        session = self._session(data)
        if session.get_inputs()[0].shape[0] != 1:
            raise NSRError(f"{self.path}: its batch_one file takes {session.get_inputs()[0].shape[0]} windows a "
                           f"call, not 1; refusing to run it (re-export)")
        return session

    def _cached_session(self, built, data: bytes, portable):
        """A session of a blocked model, or None; a cache entry ONNX Runtime cannot load is rebuilt once,
        not blamed on the export."""
        from nsr_deploy.runtimes.onnxruntime.specialise import specialise

        try:
            return self._session(built.data)
        except NSRError:
            if not built.cached:
                raise
        rebuilt = specialise(data, built.batch, self.threads, portable, refresh=True)
        return self._session(rebuilt.data) if rebuilt.why is None else None

    def _check_nchwc_block(self) -> None:
        """A blocked model's filters are laid out for one NCHWc block size: refuse another."""
        want = self.session.get_modelmeta().custom_metadata_map.get("nsr_nchwc_block")
        if want is None:
            return
        from nsr_deploy.runtimes.onnxruntime.nchwc_probe import mlas_block_size

        have = mlas_block_size()
        if int(want) != have:
            self.session = None
            raise NSRError(f"{self.path}: exported in the 'nchwc' conv form for NCHWc block {want}, but this "
                           f"machine's ONNX Runtime uses {have or 'none'}; re-export with a portable --conv-form")

    def _deactivate(self) -> None:
        self.session = self.single = None

    def computed_items(self, m: int) -> int:
        n = self.session_batch
        if self.single is not None or n is None:
            return m
        return -(-m // n) * n  # short calls padded to the session's fixed batch

    def _infer_short(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.single is None:
            return super()._infer_short(x, valid)
        return np.concatenate([self.single.run(["y"], {"x": x[i:i + 1], "valid": valid[i:i + 1]})[0]
                               for i in range(len(x))])

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        n = self.session_batch
        if n is None or len(x) == n:
            return self.session.run(["y"], {"x": x, "valid": valid})[0]
        # a dynamic-batch file specialised at a fixed batch: full calls, then the rest on the short path
        full = len(x) - len(x) % n
        outs = [self.session.run(["y"], {"x": x[i:i + n], "valid": valid[i:i + n]})[0] for i in range(0, full, n)]
        if full < len(x):
            outs.append(self._infer_rest(x[full:], valid[full:]))
        return np.concatenate(outs)

    def _infer_rest(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.single is not None:
            return self._infer_short(x, valid)
        n, m = self.session_batch, len(x)
        xb = np.concatenate([x, np.repeat(x[-1:], n - m, 0)])
        vb = np.concatenate([valid, np.repeat(valid[-1:], n - m, 0)])
        return self.session.run(["y"], {"x": xb, "valid": vb})[0][:m]

    def describe(self) -> dict:
        return {**super().describe(), "specialisation": self.specialisation}
