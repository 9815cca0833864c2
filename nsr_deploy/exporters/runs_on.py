"""Where an export folder runs, from evidence: per target, the runtimes, architectures and APIs its kind of
file is executed on by a named test of this repository (or, for the file itself, by the export's own parity
gate), and, listed apart with the reason, where it is expected to run but was not executed here.

Written into ``nsr.json`` (``runs_on``) and printed by ``nsr-deploy export``, so whoever ships the folder
knows which claims were run and which are the format's promise only. Each target module says its own (its
``runs_on(entry, tools) -> list[Where]``); this is the one place that asks them all and writes the section.
``tests/exporters/test_runs_on.py`` checks that every named test exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# tests that run several targets' files
CONFORMANCE = "tests/test_conformance.py::test_backend_restores_real_photos_as_the_reference_does"
ARM64 = "tests/runtimes/test_arm64_emulated.py::test_every_arm64_export_restores_as_on_x86_under_emulation"
ARM64_WHERE = "ARM64 Linux CPUs (run under qemu emulation of an Arm Neoverse N1, ARMv8.2-A)"
GATE = "this export's parity gate (nsr.json parity)"
RUNTIME_EXTRA = ("tests/runtimes/test_runtime_extra_venv.py::"
                 "test_runtime_extra_alone_restores_through_onnxruntime_and_openvino")


@dataclass(frozen=True)
class Where:
    """A place a file runs: executed there ``by`` a test (``tests/...py::test_name``) or the export's gate, or
    not verified here, and ``why``."""

    where: str
    by: str | None = None
    why: str | None = None

    def __post_init__(self):
        if (self.by is None) == (self.why is None):
            raise ValueError(f"{self.where!r}: a place is either verified by a test or says why it is not")


def verified(where: str, by: str) -> Where:
    return Where(where, by=by)


def unverified(where: str, why: str) -> Where:
    return Where(where, why=why)


def runs_on(manifest: dict, module_of: Callable) -> dict[str, dict[str, list[dict]]]:
    """Target -> ``{"verified": [{where, by}], "not_verified": [{where, why}]}`` for every target in
    ``manifest`` whose module says (``module_of(name)``: the target's module, or None)."""
    tools = manifest.get("tools", {})
    out = {}
    for name, entry in manifest.get("targets", {}).items():
        said = getattr(module_of(name), "runs_on", None)
        if said is None:
            continue
        places = said(entry, tools)
        out[name] = {"verified": [{"where": p.where, "by": p.by} for p in places if p.by],
                     "not_verified": [{"where": p.where, "why": p.why} for p in places if not p.by]}
    return out


def printed_lines(manifest: dict) -> list[str]:
    """What ``nsr-deploy export`` prints of ``runs_on``: a line per place, the verified ones first."""
    lines = []
    for name, places in manifest.get("runs_on", {}).items():
        file = manifest["targets"][name]["file"]
        lines += [f"runs on ({file}): {p['where']}  [run by {p['by']}]" for p in places["verified"]]
        lines += [f"not verified here ({file}): {p['where']}: {p['why']}" for p in places["not_verified"]]
    return lines
