"""Wall-clock timing of one configuration: warm-up calls, then timed runs, summarised.

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
