"""``backend="auto"`` on an export folder: the fastest engine the folder holds that this machine runs.

A folder can hold several engines: ``model.onnx`` for ONNX Runtime, ``model.xml`` for OpenVINO (at the
export's precision: fp32, bf16 or int8), ncnn, ExecuTorch, TensorRT. Which is fastest depends on the CPU
(AVX2, AVX-512 VNNI / BF16, AMX), the runtime releases and the model, so no fixed order is right
everywhere: on an AMX Xeon OpenVINO's fp32 sparse engine took 310 ms where ONNX Runtime took 255 ms on
the same folder, while a bf16 IR took 60.

So the first time a folder is loaded on a machine, every engine it holds that runs here gets the same
patch batch, their runs interleaved (:func:`~nsr_deploy.core.timing.measure_interleaved`), and the
fastest is chosen. The choice is cached (``$NSR_DEPLOY_CACHE/auto``, see :mod:`nsr_deploy.core.cache`),
keyed by the engines' sha256, the CPU (model, flags, usable CPUs), the threads, the batch and the
runtime versions: measured once per machine and folder, again when any of those changes. A cache record
is a hint, never trusted to run something else: it must match the key and name an engine that is a
candidate now, or it is measured again. With one candidate nothing is timed. ``NSR_AUTO_BACKEND=order``
takes the first candidate in :data:`~nsr_deploy.core.capabilities.AUTO_ORDER` without timing anything.

Every gated engine of a folder passed its export's gate, so any of them is a correct choice; ``auto``
picks among them by speed only. The choice and why travel in ``runner.describe()["auto"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata

import numpy as np

from nsr_deploy.core.budgets import usable_cpus
from nsr_deploy.core.cache import atomic_write, cache_root
from nsr_deploy.core.capabilities import AUTO_ORDER, TARGET_OF_BACKEND
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.core.machine import cpu_info, describe_cpu
from nsr_deploy.core.safe_read import read_json
from nsr_deploy.core.timing import measure_interleaved

ORDER_ENV = "NSR_AUTO_BACKEND"  # "order": no timing, the first candidate in AUTO_ORDER
CHOICE_VERSION = 1  # bump when the measurement changes: old records go unused
RUNS, WARMUP, ROUNDS = 6, 1, 3
SLOW_CALL_S = 0.5  # engines slower than this per call get half the runs: the choice stays a few seconds
SEED = 7
# the package whose release decides a backend's kernels
PACKAGE_OF = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "executorch": "executorch",
              "tensorrt": "tensorrt"}


@dataclass
class AutoChoice:
    backend: str
    why: str
    candidates: tuple[str, ...]
    median_ms: dict[str, float] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # candidates that failed to load or run, why
    cached: bool = False
    measured: str | None = None  # when (UTC date) the figures were taken

    def as_dict(self) -> dict:
        return asdict(self) | {"candidates": list(self.candidates)}


def candidates(targets: dict, unavailable: Callable[[str], str | None]) -> tuple[list[str], dict[str, str]]:
    """Backends whose engine the folder holds and that run here (AUTO_ORDER), and those that cannot, with why."""
    ok, cannot = [], {}
    for backend in AUTO_ORDER:
        if TARGET_OF_BACKEND[backend] not in targets:
            continue
        why = unavailable(backend)
        if why is None:
            ok.append(backend)
        else:
            cannot[backend] = why
    return ok, cannot


def _version(backend: str) -> str | None:
    try:
        return metadata.version(PACKAGE_OF.get(backend, backend))
    except metadata.PackageNotFoundError:
        return None


def choice_key(targets: dict, names: list[str], threads: int | None, batch: int, patch: int) -> dict:
    """What a measured choice depends on: change any of it and it is measured again."""
    return {"version": CHOICE_VERSION, "engines": {b: targets[TARGET_OF_BACKEND[b]].get("sha256") for b in names},
            "cpu": cpu_info(), "cpus": usable_cpus(), "threads": threads, "batch": batch, "patch": patch,
            "runtimes": {b: _version(b) for b in names}}


def record_path(key: dict):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_root() / "auto" / f"{digest[:32]}.json"


def read_record(key: dict, names: list[str]) -> dict | None:
    """The cached choice for ``key``, when its record matches it and names a candidate; else None."""
    path = record_path(key)
    if not path.exists():
        return None
    try:
        record = read_json(path, "auto choice record")
    except NSRError:
        return None
    if not isinstance(record, dict) or record.get("key") != key or record.get("backend") not in names:
        return None
    timings = record.get("median_ms")
    if not isinstance(timings, dict) or not all(isinstance(v, (int, float)) for v in timings.values()):
        return None
    return record


def _why_measured(backend: str, timings: dict[str, float], batch: int, patch: int, threads: int | None,
                  when: str, cached: bool) -> str:
    ranked = ", ".join(f"{b} {ms:.1f} ms" for b, ms in sorted(timings.items(), key=lambda kv: kv[1]))
    others = [ms for b, ms in timings.items() if b != backend]
    lead = f"{min(others) / timings[backend]:.2f}x faster than the next" if others else "the only one that ran"
    return (f"fastest here ({lead}): {ranked} per call of {batch} patches {patch}x{patch} on "
            f"{describe_cpu()}, {threads or usable_cpus()} thread(s); measured {when}"
            + (", cached" if cached else ""))


def choose(targets: dict, open_runner: Callable[[str], object], unavailable: Callable[[str], str | None],
           threads: int | None, batch: int, patch: int, channels: int, folder: str):
    """``(AutoChoice, runner)``: the backend to run and, when it was measured now, its open runner (the
    others are closed); ``runner`` None: open the chosen backend as usual. Raises NSRError when no engine
    of the folder runs here."""
    names, cannot = candidates(targets, unavailable)
    if not names:
        built = ", ".join(targets) or "nothing"
        reasons = "; ".join(f"{b}: {why}" for b, why in cannot.items())
        raise BackendUnavailable(f"{folder}: no runtime here for what it holds ({built})"
                                 + (f": {reasons}" if reasons else ""))
    cannot_note = "".join(f"; {b} cannot run here: {why}" for b, why in cannot.items())
    if len(names) == 1:
        return AutoChoice(names[0], f"the only engine of the folder that runs here{cannot_note}", tuple(names),
                          not_run=cannot), None
    if os.environ.get(ORDER_ENV, "").strip().lower() == "order":
        return AutoChoice(names[0], f"{ORDER_ENV}=order: the first of {', '.join(names)} (not timed)",
                          tuple(names), not_run=cannot), None
    key = choice_key(targets, names, threads, batch, patch)
    record = read_record(key, names)
    if record is not None:
        b, timings = record["backend"], record["median_ms"]
        return AutoChoice(b, _why_measured(b, timings, batch, patch, threads, record.get("measured"), True),
                          tuple(names), timings, record.get("not_run") or {}, True, record.get("measured")), None
    return _measure(names, cannot, key, open_runner, threads, batch, patch, channels)


def _measure(names, cannot, key, open_runner, threads, batch, patch, channels):
    rng = np.random.default_rng(SEED)
    x = rng.random((batch, channels, patch, patch), dtype=np.float32)
    valid = np.ones((batch, 1, patch, patch), np.float32)
    runners, failed = {}, dict(cannot)
    slow = False
    try:
        for b in names:
            try:
                runner = open_runner(b).activate()
                t0 = time.perf_counter()
                runner.infer(x, valid)  # also the check that it runs at all
                slow |= time.perf_counter() - t0 > SLOW_CALL_S
                runners[b] = runner
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - an engine that does not load or run here is not a candidate
                failed[b] = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if not runners:
            reasons = "; ".join(f"{b}: {w}" for b, w in failed.items())
            raise BackendUnavailable(f"no engine of the folder runs here: {reasons}")
        runs = RUNS // 2 if slow else RUNS
        timings = measure_interleaved({b: (lambda r=r: r.infer(x, valid)) for b, r in runners.items()},
                                      runs, WARMUP, ROUNDS) if len(runners) > 1 else {}
        medians = {b: round(t.median, 3) for b, t in timings.items()}
        best = min(medians, key=medians.get) if medians else next(iter(runners))
    except BaseException:
        for r in runners.values():
            r.deactivate()
        raise
    for b, r in runners.items():
        if b != best:
            r.deactivate()
    when = time.strftime("%Y-%m-%d", time.gmtime())
    not_run = {b: w for b, w in failed.items() if b not in cannot}
    if medians:
        why = _why_measured(best, medians, batch, patch, threads, when, False)
        try:
            doc = {"key": key, "backend": best, "median_ms": medians, "not_run": not_run, "measured": when}
            atomic_write(record_path(key), (json.dumps(doc, indent=1) + "\n").encode())
        except OSError:  # a read-only home: the choice holds for this load, measured again next time
            pass
    else:
        why = "the only engine of the folder that ran here" + "".join(f"; {b}: {w}" for b, w in failed.items())
    return AutoChoice(best, why, tuple(names), medians, not_run, False, when), runners[best]
