"""Wall-clock timing: warm-up calls, then timed runs, summarised; one configuration, or several
against each other (:func:`measure_interleaved`). The bench's suites and ``--conv-form auto`` time
with it.

The paper reports the *mean* of 100 runs (Section 4.2, Figure 5); latency figures elsewhere in the
bench use the median and p90, which resist the noise of a shared machine. Every summary keeps all
four (mean, median, p90, min) so either reading can be made from the JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Milliseconds of ``runs`` timed calls (after ``warmup`` untimed ones)."""

    times_ms: tuple[float, ...]
    warmup: int

    @property
    def runs(self) -> int:
        return len(self.times_ms)

    @property
    def mean(self) -> float:
        return float(np.mean(self.times_ms))

    @property
    def median(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    @property
    def min(self) -> float:
        return float(np.min(self.times_ms))

    def as_dict(self) -> dict:
        return {"mean_ms": round(self.mean, 4), "median_ms": round(self.median, 4), "p90_ms": round(self.p90, 4),
                "min_ms": round(self.min, 4), "runs": self.runs, "warmup": self.warmup}


def measure(call: Callable[[], object], runs: int, warmup: int) -> Timing:
    """Time ``call`` ``runs`` times after ``warmup`` untimed calls (at least one run)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(tuple(times), warmup)


DEFAULT_ROUNDS = 5
SETTLE_S = 0.1


def measure_interleaved(calls: dict[str, Callable[[], object]], runs: int, warmup: int,
                        rounds: int = DEFAULT_ROUNDS, settle_s: float = SETTLE_S) -> dict[str, Timing]:
    """Time several configurations that will be compared as ratios, their runs alternating in rounds.

    A shared machine drifts (a neighbour starts, the clock steps down) over the seconds one
    configuration's block of runs takes; timed one after the other, configurations meet different
    machines and their ratios carry that drift. Here each round gives every configuration its share
    of the ``runs`` (the starting one rotates), so drift moves them alike. Each share starts with a
    ``settle_s`` pause and one untimed call. The pause matters: a runtime's worker threads spin for a
    while after a call (ONNX Runtime's do by default), and on 2 cores the previous configuration's
    spinning threads took a core from the next one (measured: a k=4 sparse layer timed at 0.5-0.65x
    of its baseline interleaved without the pause, 0.38-0.40x one after the other or with it).
    ``warmup`` untimed calls each, first.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    runs, keys = max(1, runs), list(calls)
    rounds = max(1, min(rounds, runs))
    times: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        share = runs // rounds + (r < runs % rounds)
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            call = calls[key]
            if settle_s:
                time.sleep(settle_s)
            call()
            for _ in range(share):
                t0 = time.perf_counter()
                call()
                times[key].append((time.perf_counter() - t0) * 1e3)
    return {key: Timing(tuple(times[key]), warmup) for key in keys}


def measure_rows(entries: list[tuple[dict, Callable[[], object]]], runs: int, warmup: int) -> list[Timing]:
    """:func:`measure_interleaved` over prepared ``(row, call)`` pairs, timings in their order. On a crash
    every row is marked (``error``) before the exception goes on, so no row is left half-filled."""
    try:
        timings = measure_interleaved({str(i): call for i, (_, call) in enumerate(entries)}, runs, warmup)
    except Exception as e:
        for row, _ in entries:
            row["error"] = f"timing crashed: {type(e).__name__}"
        raise
    return [timings[str(i)] for i in range(len(entries))]


@contextmanager
def torch_threads(threads: int):
    """PyTorch's intra-op thread count set to ``threads`` for the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
