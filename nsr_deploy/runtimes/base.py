"""The one interface every backend implements (after Polygraphy's runners: lazy activation,
same call for every backend, explicit deactivation).

A runner runs the exported *patch network*: ``x [N, C, h, w]`` and ``valid [N, 1, h, w]``
(float32) to ``y [N, C, h*s, w*s]``. Engines with a fixed patch batch get their batch padded and
split here, so callers never see it. ``infer`` is safe to call from several threads.
"""

from __future__ import annotations

import threading

import numpy as np

from nsr_deploy.core.errors import NSRError


class Runner:
    backend = "?"
    precision = "fp32"

    def __init__(self, path: str, threads: int | None = None, files=None):
        self.path = str(path)
        self.threads = threads
        self._files = files  # contract.EngineFiles: the verified bytes of an export folder's engine
        self.auto_choice: dict | None = None  # set when load(backend="auto") chose this runner: which, and why
        self.static_batch: int | None = None
        self._active = False
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> Runner:
        with self._lock:
            if not self._active:
                self._activate()
                self._active = True
        return self

    def deactivate(self) -> None:
        with self._lock:
            if self._active:
                self._deactivate()
                self._active = False

    close = deactivate

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @property
    def active(self) -> bool:
        return self._active

    # -- inference -------------------------------------------------------------------------
    def infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if not self._active:
            self.activate()
        x = np.ascontiguousarray(x, dtype=np.float32)
        valid = np.ascontiguousarray(valid, dtype=np.float32)
        n = self.static_batch
        if n is None or x.shape[0] == n:
            return self._checked_infer(x, valid)
        outs = []
        for i in range(0, x.shape[0], n):
            xb, vb = x[i:i + n], valid[i:i + n]
            run = self._infer if xb.shape[0] == n else self._infer_short
            outs.append(self._checked_infer(np.ascontiguousarray(xb), np.ascontiguousarray(vb), run))
        return np.concatenate(outs)

    def _checked_infer(self, x: np.ndarray, valid: np.ndarray, run=None) -> np.ndarray:
        """A backend's own exception (an engine that disagrees with its manifest's shapes, a corrupt
        engine) becomes one error line naming the engine."""
        try:
            return (run or self._infer)(x, valid)
        except (NSRError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - every backend has its own exception types
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise NSRError(f"{self.path}: the {self.backend} engine failed on input {list(x.shape)} ({first})") \
                from None

    def max_window(self) -> tuple[int, int] | None:
        """The largest window ``(h, w)`` the engine takes, once active; None: any size."""
        return None

    def computed_items(self, m: int) -> int:
        """Batch items one call of ``m`` patches really computes (a fixed batch pads short calls)."""
        n = self.static_batch
        return m if n is None else -(-m // n) * n

    def _infer_short(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Fewer patches than a fixed batch: pad with copies of the last item, drop them after.
        Runners with a smaller engine at hand override this (and :meth:`computed_items`)."""
        n, m = self.static_batch, x.shape[0]
        xb = np.concatenate([x, np.repeat(x[-1:], n - m, 0)])
        vb = np.concatenate([valid, np.repeat(valid[-1:], n - m, 0)])
        return self._infer(xb, vb)[:m]

    # -- for subclasses --------------------------------------------------------------------
    def engine_files(self):
        """The engine's bytes, read once (:class:`~.contract.EngineFiles`): those an export folder's hash
        check verified, or, for a bare engine file, read now. Runtimes load from these bytes, never from
        the path again."""
        if self._files is None:
            from nsr_deploy.runtimes.contract import read_engine_files

            self._files = read_engine_files(self.path)
        return self._files

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass

    def _infer(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        out = {"backend": self.backend, "precision": self.precision, "path": self.path,
               "threads": self.threads, "static_batch": self.static_batch}
        if self.auto_choice:
            out["auto"] = self.auto_choice
        return out
