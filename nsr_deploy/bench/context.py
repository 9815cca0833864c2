"""What every suite of one bench run shares: settings, backends, the model, engines, the GEMM peaks.

A suite is an object with ``jobs()`` (the configurations it will measure, each a :class:`Job`, so
one progress bar can count them all before any runs), ``result()`` (its JSON section) and
``tables()`` (its terminal tables); a suite that reads engines against a reduced precision's GEMM peak
lists those precisions in ``peak_precisions``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nsr_deploy.bench.backends import Backends
from nsr_deploy.bench.settings import BenchSettings


@dataclass
class Job:
    """One configuration to measure: ``label`` shows on the progress bar, ``run`` does it."""

    label: str
    run: Callable[[], None]
    shows: Callable[[], list] | None = None  # tables this job completes: shown as soon as it ends


@dataclass
class BenchContext:
    settings: BenchSettings
    backends: Backends
    scratch: Path
    loaded: object | None = None  # LoadedModel; None when no suite needs a model
    factory: object | None = None  # EngineFactory
    machine: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)  # precision -> its GEMM rate (gemm_peak; fp32: sgemm_rate)

    @property
    def sgemm(self) -> dict | None:
        return self.peaks.get("fp32")

    @property
    def threads(self) -> int:
        return self.settings.threads
