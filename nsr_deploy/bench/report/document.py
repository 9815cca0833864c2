"""The bench's report: one JSON document (machine, settings, every figure) and its terminal tables.

JSON layout (``format`` = ``nsr-deploy/bench-1``)::

    format, created, command, preset, settings
    machine     cpu, cores, threads, versions, load average at start and end, sgemm
    model       name and config summary of the model measured (absent when only the layer suite ran)
    backends    {backend: {status: used, threads, how} | {status: skipped, why}}
    suites      {parity | layer | model | quality: the suite's section}
    seconds     wall time of the whole run; job_seconds: per configuration, building included
    crashed     configurations that raised (a bug): the run goes on and lists them here
    summary     headline figures beside the performance targets (see nsr_deploy.bench.report.summary)
    passed      False when a parity check failed or a configuration crashed; None when the parity suite
                did not run and nothing crashed

Files are written atomically (a temp file renamed into place), so a failed run leaves nothing half
written.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nsr_deploy.bench.report.table import Table
from nsr_deploy.core.errors import NSRError

FORMAT = "nsr-deploy/bench-1"


def writable_target(path: str | Path, what: str) -> Path:
    """``path`` if a file can be written there (its folder exists), else a user error."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise NSRError(f"{what} {path}: is a folder, expected a file name")
    if not parent.is_dir():
        raise NSRError(f"{what} {path}: folder {parent} does not exist")
    return path


def write_atomically(path: Path, write) -> None:
    """Call ``write(temp_path)`` then rename the temp file onto ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class BenchReport:
    data: dict
    tables: list[Table] = field(default_factory=list)
    streamed: int = 0  # the first tables, already shown while the run went on (run_bench's on_text)

    @property
    def passed(self) -> bool | None:
        return self.data.get("passed")

    def heading(self, busy_note: bool = True) -> list[str]:
        d, m = self.data, self.data["machine"]
        used = [f"{b} ({v['how']})" for b, v in d["backends"].items() if v["status"] == "used"]
        skipped = [f"{b} ({v['why']})" for b, v in d["backends"].items() if v["status"] == "skipped"]
        lines = [f"{d['command']}  [{d['preset']} preset]",
                 f"machine: {m.get('cpu_openvino') or m['cpu']}, {m['usable_cpus']} usable CPUs; "
                 f"{m['threads']} threads for every backend",
                 "backends: " + ("; ".join(used) or "none")]
        if skipped:
            lines.append("skipped: " + "; ".join(skipped))
        if d.get("model"):
            lines.append(f"model: {d['model']['name']} ({d['model']['source']})")
        return lines + (self.busy_note() if busy_note else [])

    def busy_note(self) -> list[str]:
        m = self.data["machine"]
        start, end = m.get("load_average_start"), m.get("load_average_end")
        peak = m.get("load_average_peak") or max((x for x in (start, end) if x), key=lambda x: x[0], default=None)
        if peak and peak[0] >= 0.5 * m["usable_cpus"]:  # the whole run: a load that rose midway counts too
            def at(x):
                return x[0] if x else "?"

            return [f"note: the machine was busy (1-minute load average {at(start)} at start, peak {at(peak)}, "
                    f"{at(end)} at end, on {m['usable_cpus']} CPUs): latencies are noisy; ratios measured in one "
                    f"run hold up better"]
        return []

    def render(self, streamed: bool = False) -> str:
        """The whole report; ``streamed=True``: only what was not shown while the run went on (the heading
        and the suites' tables were), the busy note then measured over the whole run."""
        if streamed:
            blocks = ["\n".join(self.busy_note()), *[t.render() for t in self.tables[self.streamed:]]]
            blocks = [b for b in blocks if b]
        else:
            blocks = ["\n".join(self.heading()), *[t.render() for t in self.tables]]
        if self.data.get("crashed"):
            blocks.append("\n".join(f"crashed: {c['job']}: {c['error']}" for c in self.data["crashed"]))
        blocks.append(f"done in {self.data['seconds']:.0f} s" + self._verdict())
        return "\n\n".join(blocks)

    def _verdict(self) -> str:
        out = ""
        if "parity" in self.data["suites"]:
            failed = [r["engine"] for r in self.data["suites"]["parity"]["rows"] if not r["passed"]]
            out += "; parity: all engines pass" if not failed else f"; parity FAILED: {', '.join(failed)}"
        if self.data.get("crashed"):
            out += f"; {len(self.data['crashed'])} configuration(s) crashed (listed above)"
        return out

    def write_json(self, path: str | Path) -> Path:
        path = writable_target(path, "--json")
        text = json.dumps(self.data, indent=2, default=_jsonable) + "\n"
        write_atomically(path, lambda tmp: tmp.write_text(text))
        return path

    def write_plot(self, path: str | Path) -> Path:
        from nsr_deploy.bench.report.plot import figure5_png

        if "layer" not in self.data["suites"]:
            raise NSRError("--plot draws the layer suite (Figure 5): add layer to --suite")
        path = writable_target(path, "--plot")
        write_atomically(path, lambda tmp: figure5_png(self.data["suites"]["layer"], tmp))
        return path


def _jsonable(value):
    """numpy scalars, paths and tuples that slipped into the report."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
