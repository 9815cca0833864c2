"""Typed results of a check and of a gate: frozen, and serialised in one place for the manifest
(``nsr.json``'s ``parity``) and the bench report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Check:
    """One comparison against the reference: the worst difference, the PSNR (inf: identical), the
    limit it was held to and whether it passed. ``figures`` are extra fields a check reports (int8)."""

    check: str
    max_abs: float
    psnr: float
    tolerance: float
    passed: bool
    detail: str = ""
    min_psnr: float | None = None
    figures: Mapping = field(default_factory=dict)

    @property
    def psnr_rounded(self) -> float | None:
        """The PSNR as the manifest writes it (None: identical outputs)."""
        return round(self.psnr, 2) if np.isfinite(self.psnr) else None

    def to_manifest(self) -> dict:
        out = {"check": self.check, "max_abs": float(f"{self.max_abs:.3g}"), "psnr": self.psnr_rounded,
               "tolerance": self.tolerance, "passed": bool(self.passed), "detail": self.detail}
        if self.min_psnr is not None:
            out["min_psnr"] = self.min_psnr
        return {**out, **self.figures}

    to_report = to_manifest  # a bench report row holds the same fields

    @classmethod
    def from_manifest(cls, d: Mapping) -> Check:
        known = ("check", "max_abs", "psnr", "tolerance", "passed", "detail", "min_psnr")
        psnr = float("inf") if d.get("psnr") is None else float(d["psnr"])
        return cls(d["check"], float(d["max_abs"]), psnr, d["tolerance"], bool(d["passed"]), d.get("detail", ""),
                   d.get("min_psnr"), {k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class GateResult:
    """A gate: its checks and the limits they were held to (``tolerance_max_abs`` and, for fp16,
    ``min_psnr``; int8: ``tolerance_drop_db`` and the ``task``). Passes when every check passes.
    ``facts``: what running the engine showed besides parity (compile time, execution precisions),
    for the target's manifest entry; not part of the gate's own record."""

    checks: tuple[Check, ...]
    limits: Mapping = field(default_factory=dict)
    facts: Mapping = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def worst_failure(self) -> Check:
        return max((c for c in self.checks if not c.passed), key=lambda c: c.max_abs)

    def failure_line(self, engine: str) -> str:
        """The one-line reason the gate failed, naming ``engine`` (e.g. ``OpenVINO fp16``)."""
        worst = self.worst_failure()
        limit = f"max abs {worst.max_abs:.3g} (limit {worst.tolerance:g})"
        if worst.min_psnr is not None:
            limit += f", PSNR {worst.psnr_rounded} dB (at least {worst.min_psnr:g})"
        return f"parity gate failed: {engine} vs PyTorch reference: {limit} on {worst.check}; nothing written"

    def to_manifest(self) -> dict:
        return {**self.limits, "passed": self.passed, "checks": [c.to_manifest() for c in self.checks]}

    @classmethod
    def from_manifest(cls, d: Mapping) -> GateResult:
        return cls(tuple(Check.from_manifest(c) for c in d["checks"]),
                   {k: v for k, v in d.items() if k not in ("passed", "checks")})
