"""What every suite of one bench run shares: settings, backends, the model, engines, the sgemm rate.

A suite is an object with ``jobs()`` (the configurations it will measure, each a :class:`Job`, so
one progress bar can count them all before any runs), ``result()`` (its JSON section) and
``tables()`` (its terminal tables).
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


@dataclass
class BenchContext:
    settings: BenchSettings
    backends: Backends
    scratch: Path
    loaded: object | None = None  # LoadedModel; None when no suite needs a model
    factory: object | None = None  # EngineFactory
    machine: dict = field(default_factory=dict)
    sgemm: dict | None = None

    @property
    def threads(self) -> int:
        return self.settings.threads
