"""Which backends a bench run can use here, which it skips and why, and how each is told its threads.

Every backend is optional: a missing library, a runner or exporter not in this build, or a device
the run is not for makes it a *skipped* entry with the reason, never an error. Conv forms are per
backend too (``nchwc`` is ONNX Runtime's internal layout, nothing else reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

from nsr_deploy.core.capabilities import EXPORTED_BACKENDS, GPU_BACKENDS, TARGET_OF_BACKEND, forms_of

FORM_NOT_HERE = {"nchwc": "ONNX Runtime's internal NCHWc ops: only ONNX Runtime runs them",
                 "nchwc-at-load": "ONNX Runtime's load-time specialisation: only its runner does it",
                 "folded": "OpenVINO's own graph (built from its opsets): only OpenVINO runs it"}
THREAD_KNOB = {"torch": "torch.set_num_threads({n})",
               "onnxruntime": "SessionOptions.intra_op_num_threads={n}, inter_op_num_threads=1",
               "openvino": "INFERENCE_NUM_THREADS={n}, PERFORMANCE_HINT=LATENCY (one stream)",
               "tensorrt": "n/a (GPU)",
               "ncnn": "Net.opt.num_threads={n}, one patch per extractor call",
               "executorch": "XNNPACK thread pool of {n} (_unsafe_reset_threadpool), one patch per call"}


@dataclass(frozen=True)
class Backends:
    """The backends a run uses (in the order asked) and the ones it skips, with why."""

    used: tuple[str, ...]
    skipped: dict[str, str]

    def forms(self, backend: str, wanted: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
        """The conv forms of ``wanted`` that ``backend`` runs, and the others with why not."""
        ok = tuple(f for f in wanted if f in forms_of(backend))
        skipped = {f: FORM_NOT_HERE.get(f, f"not a {backend} conv form") for f in wanted if f not in ok}
        return ok, skipped

    def as_dict(self, threads: int) -> dict:
        out = {b: {"status": "used", "threads": threads, "how": THREAD_KNOB[b].format(n=threads)} for b in self.used}
        out.update({b: {"status": "skipped", "why": why} for b, why in self.skipped.items()})
        return out


def unavailable_reason(backend: str, device: str) -> str | None:
    """None when ``backend`` can be benchmarked on ``device`` here, else why not."""
    from nsr_deploy.runtimes import backend_unavailable

    if backend in GPU_BACKENDS and device == "cpu":
        why = backend_unavailable(backend)
        return "a GPU backend and this run is --device cpu" + (f"; also: {why}" if why else "")
    why = backend_unavailable(backend)
    if why is None and backend in EXPORTED_BACKENDS:
        why = _exporter_unavailable(TARGET_OF_BACKEND[backend])
    return why


def _exporter_unavailable(target: str) -> str | None:
    """The bench builds its own engines, so a backend also needs its exporter (and the ONNX one)."""
    from nsr_deploy.core.errors import BackendUnavailable
    from nsr_deploy.exporters.pipeline import target_module

    for name in dict.fromkeys(("onnx", target)):
        try:
            why = target_module(name).unavailable()
        except BackendUnavailable as e:
            why = str(e)
        if why:
            return f"cannot export for it: {why}"
    return None


def resolve_backends(wanted: tuple[str, ...], device: str) -> Backends:
    used, skipped = [], {}
    for backend in wanted:
        why = unavailable_reason(backend, device)
        if why is None:
            used.append(backend)
        else:
            skipped[backend] = why
    return Backends(tuple(used), skipped)
