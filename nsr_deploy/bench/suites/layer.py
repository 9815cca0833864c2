"""The layer suite: the paper's Figure 5 (Section 4.2 "Computation time") on this machine, every backend.

Protocol. One sparse conv (:class:`~nsr_deploy.models.SparseConv2d`, Eq. 7-10), ``C`` = 64 input
channels, 3x3, on a batch of 64x64 patches (each patch pooled on its own, as in the network):

* **baseline**: a plain 64 -> 64 conv (``nn.Conv2d`` in PyTorch, a ``Conv`` graph when exported);
* **fixed model size**, k = 2, 4, 8, 16: k groups of 64/k output channels each. The stored weight
  equals the baseline's; each patch mixes one 64/k-channel kernel and convolves with it (k-fold
  fewer FLOPs);
* **fixed FLOPs**, same k: k groups of 64 outputs each (k times the parameters); each patch still
  convolves with one mixed 64-channel kernel (the baseline's FLOPs plus routing and mixing).

d (cardinals) is 4 in every configuration, so that only k varies: 4 is the largest power of two
dividing every per-patch width (64/16 = 4 outputs at k = 16, fixed size). d hardly moves the time:
the MLP is k*d logits per patch and the mixing costs k multiply-adds per kernel weight whatever d is.

Backends: PyTorch eager runs the reference layer against ``nn.Conv2d``; ONNX Runtime and OpenVINO
run exported single-layer graphs (:mod:`.layer_graphs`), every sparse conv form the run asks for
against a plain ``Conv`` graph. Figures are the mean of the timed runs (the paper's statistic), in
ms per call of the whole batch; each side's ratio to its own baseline is what compares with the
paper. Each line of a table (a backend's conv form under one protocol, k = 2..16) is timed with its own
plain-conv baseline: the four configurations and the baseline are opened, then timed together, their
runs interleaved in rounds (:func:`~nsr_deploy.core.timing.measure_interleaved`), so that the machine's
drift does not fall between a configuration and its baseline; then they are closed, before the next
line's are opened (an open graph holds its activation buffers: a backend's 25 graphs at once took 4.3 GB
in ONNX Runtime, its matmul form's nine 2.2 GB). Each backend gets its own table, shown as soon as its
last line is timed: PyTorch eager's comes within seconds.
Each exported graph's output is checked against the reference layer (first two patches).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsr_deploy.bench import paper
from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.report.table import Table, fmt
from nsr_deploy.bench.settings import LayerProtocol
from nsr_deploy.bench.suites.layer_graphs import (
    LAYER_FORMS,
    export_layer,
    export_layer_pte,
    export_nchwc_layer,
    layer_runner,
)
from nsr_deploy.core.capabilities import EXECUTORCH_FORM, LAYER_BACKENDS, TARGET_OF_BACKEND
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.timing import measure_rows

PROTOCOLS = ("baseline", "fixed size", "fixed FLOPs")
CHECKED_PATCHES = 2
SEED = 0


@dataclass(frozen=True)
class LayerConfig:
    protocol: str  # one of PROTOCOLS
    k: int  # 1 for the baseline
    out: int  # output channels of the per-patch conv

    @property
    def key(self) -> str:
        return "baseline" if self.protocol == "baseline" else f"{self.protocol} k={self.k}"


def configurations(p: LayerProtocol) -> list[LayerConfig]:
    configs = [LayerConfig("baseline", 1, p.channels)]
    configs += [LayerConfig("fixed size", k, p.channels // k) for k in p.groups]
    configs += [LayerConfig("fixed FLOPs", k, p.channels) for k in p.groups]
    return configs


def conv_flops(p: LayerProtocol, c: LayerConfig) -> float:
    """FLOPs of the per-patch convolution for one call (2 per multiply-add; routing and mixing excluded)."""
    return 2.0 * p.kernel ** 2 * p.channels * c.out * p.patch ** 2 * p.batch


def parameters(p: LayerProtocol, c: LayerConfig) -> int:
    conv = c.k * c.out * (p.channels * p.kernel ** 2 + 1)
    mlp = 0 if c.protocol == "baseline" else (p.channels + 1) * c.k * p.cardinals
    return conv + mlp


class LayerModules:
    """The PyTorch layers (seeded, so every backend times the same weights), the input batch, and the
    reference output on the first patches."""

    def __init__(self, p: LayerProtocol):
        import torch

        self.p = p
        gen = torch.Generator().manual_seed(SEED)
        self.x = torch.rand(p.batch, p.channels, p.patch, p.patch, generator=gen)
        self.x_np = self.x.numpy()
        self._modules: dict[str, object] = {}
        self._reference: dict[str, np.ndarray] = {}

    def module(self, c: LayerConfig):
        import torch
        from torch import nn

        from nsr_deploy.models.sparse_conv import SparseConv2d

        if c.key not in self._modules:
            torch.manual_seed(SEED + 10 * c.k + PROTOCOLS.index(c.protocol))
            if c.protocol == "baseline":
                m = nn.Conv2d(self.p.channels, c.out, self.p.kernel, padding=self.p.kernel // 2)
            else:
                m = SparseConv2d(self.p.channels, c.out, self.p.kernel, c.k, self.p.cardinals)
                with torch.no_grad():
                    m.mlp[0].weight.normal_(0, 1.0)  # decisive, patch-dependent mixing
            self._modules[c.key] = m.eval()
        return self._modules[c.key]

    def reference(self, c: LayerConfig) -> np.ndarray:
        import torch

        if c.key not in self._reference:
            with torch.no_grad():
                self._reference[c.key] = self.module(c)(self.x[:CHECKED_PATCHES]).numpy()
        return self._reference[c.key]

    def graph_module(self, c: LayerConfig, form: str):
        """What gets exported: the plain conv, or the sparse conv's deploy rewrite in ``form``."""
        from nsr_deploy.models.deploy import DeploySparseConv

        m = self.module(c)
        if c.protocol == "baseline":
            return m
        if form == EXECUTORCH_FORM:
            from nsr_deploy.models.deploy_xnnpack import ScaledMixConv

            return ScaledMixConv(m).eval()
        return DeploySparseConv(m, form, self.p.batch).eval()


class LayerSuite:
    name = "layer"

    def __init__(self, ctx: BenchContext):
        self.ctx = ctx
        self.p = ctx.settings.layer
        self.rows: list[dict] = []
        self.skipped: dict[str, str] = {}
        self._modules: LayerModules | None = None
        self._calls: dict[tuple, list] = {}  # (backend, line) -> (row, config, call) prepared, not yet timed
        self._stacks: dict[tuple, ExitStack] = {}  # (backend, line) -> its open runners
        self.backends: list[str] = []  # in run order, once jobs() has listed them

    @property
    def modules(self) -> LayerModules:
        if self._modules is None:
            self._modules = LayerModules(self.p)
        return self._modules

    def variants(self) -> list[tuple[str, str]]:
        """(backend, variant): PyTorch eager, and each exported backend in each single-layer form."""
        out = []
        for backend in self.ctx.backends.used:
            if backend not in LAYER_BACKENDS:
                self.skipped[backend] = "no single-layer graphs for this backend"
            elif backend == "torch":
                out.append((backend, "eager"))
            else:
                forms, not_here = self.ctx.backends.forms(backend, self.ctx.settings.conv_forms)
                for form, why in not_here.items():
                    self.skipped[f"{backend} {form}"] = why
                for form in forms:
                    if form in LAYER_FORMS:
                        out.append((backend, form))
                    else:
                        self.skipped[f"{backend} {form}"] = "a whole-network form: it is built from a model, " \
                                                            "not from a single layer"
        return out

    def jobs(self) -> list[Job]:
        variants = self.variants()
        self.backends = list(dict.fromkeys(backend for backend, _ in variants))
        jobs = []
        for backend in self.backends:
            forms, configs = [v for b, v in variants if b == backend], configurations(self.p)
            for variant in forms:
                for protocol in PROTOCOLS[1:]:
                    line = f"{variant} {protocol}"
                    for c in [configs[0], *(c for c in configs if c.protocol == protocol)]:
                        what = f"{line} plain conv" if c.protocol == "baseline" else f"{variant} {c.key}"
                        jobs.append(Job(f"layer {backend} {what}",
                                        lambda b=backend, v=variant, c=c, line=line: self.prepare(b, v, c, line)))
                    # A line's configurations and its baseline are timed in one interleaved measurement: the
                    # ratios to the baseline are the figures, so drift must not fall between them.
                    last = variant == forms[-1] and protocol == PROTOCOLS[-1]
                    shows = (lambda b=backend: [self.backend_table(b)]) if last else None
                    jobs.append(Job(f"layer {backend} {line} timing",
                                    lambda b=backend, line=line: self.time_line(b, line), shows=shows))
        return jobs

    def prepare(self, backend: str, variant: str, c: LayerConfig, line: str) -> None:
        """Build and open ``c`` in ``variant`` and check its output; timed later with its ``line``'s others."""
        p = self.p
        row = {"backend": backend, "variant": "baseline" if c.protocol == "baseline" else variant,
               "timed_with": line, "protocol": c.protocol, "k": c.k, "per_patch_out": c.out,
               "parameters": parameters(p, c), "conv_gflop_per_call": round(conv_flops(p, c) / 1e9, 4),
               "threads": self.ctx.threads}
        stack = self._stacks.setdefault((backend, line), ExitStack())
        try:
            call, out = self._prepare(stack, backend, variant, c)
        except NSRError as e:
            self.rows.append({**row, "error": str(e)})
            return
        row["max_abs_vs_reference"] = float(f"{np.max(np.abs(out - self.modules.reference(c))):.3g}")
        self.rows.append(row)
        self._calls.setdefault((backend, line), []).append((row, c, call))

    def _prepare(self, stack: ExitStack, backend: str, variant: str, c: LayerConfig):
        """The call to time (the whole batch) and the output on the first patches."""
        mods = self.modules
        if backend == "torch":
            import torch

            module = mods.module(c)
            with torch.no_grad():
                out = module(mods.x[:CHECKED_PATCHES]).numpy()

            def call():
                with torch.no_grad():
                    return module(mods.x)
            return call, out
        valid = np.ones((self.p.batch, 1, 1, 1), np.float32)  # unused by one-input graphs
        runner = stack.enter_context(layer_runner(backend, self.graph(c, variant, backend), self.ctx.threads))
        return (lambda: runner.infer(mods.x_np, valid)), runner.infer(mods.x_np, valid)[:CHECKED_PATCHES]

    def time_line(self, backend: str, line: str) -> None:
        """Every prepared configuration of ``line`` on ``backend`` with its baseline, interleaved
        (:func:`.timing.measure_rows`); each ratio is to the baseline timed beside it."""
        p, entries = self.p, self._calls.pop((backend, line), [])
        try:
            timings = measure_rows([(row, call) for row, _, call in entries], p.runs, p.warmup)
        finally:
            self._stacks.pop((backend, line), ExitStack()).close()
        for (row, c, _), timing in zip(entries, timings):
            ms = timing.mean
            row.update(timing.as_dict())
            row.update({"ms": round(ms, 4), "ms_per_patch": round(ms / p.batch, 4),
                        "conv_gflops": round(conv_flops(p, c) / (ms * 1e6), 2),
                        "paper_ms": paper.paper_ms(c.protocol, c.k),
                        "paper_ratio": _round(paper.paper_ratio(c.protocol, c.k))})
        base = self.baseline(backend, line)  # ratios now: the table is shown before the suite ends
        for r in self.rows:
            if r["backend"] == backend and r["timed_with"] == line:
                r["ratio"] = _round(r["ms"] / base["ms"]) if base and "ms" in base and "ms" in r else None

    def graph(self, c: LayerConfig, variant: str, backend: str) -> Path:
        """The exported graph of ``c`` in ``variant``, exported once and shared by the backends that read ONNX
        (ExecuTorch gets its own ``.pte``, lowered from the same module)."""
        form = "conv" if c.protocol == "baseline" else variant
        suffix = ".pte" if TARGET_OF_BACKEND.get(backend) == "executorch" else ".onnx"
        path = self.ctx.scratch / f"layer-{form}-{c.protocol.replace(' ', '_')}-k{c.k}{suffix}"
        if not path.exists():
            if suffix == ".pte":
                export_layer_pte(self.modules.graph_module(c, variant), self.modules.x, path)
            elif variant == "nchwc" and c.protocol != "baseline":
                export_nchwc_layer(self.modules.module(c), self.p.batch, path, self.ctx.settings.opset)
            else:
                export_layer(self.modules.graph_module(c, variant), self.modules.x, path, self.ctx.settings.opset)
        return path

    # -- results ---------------------------------------------------------------------------------
    def result(self) -> dict:
        for r in self.rows:
            r.setdefault("ratio", None)  # a backend whose timing crashed
        p = self.p
        return {"protocol": {"channels": p.channels, "patch": p.patch, "batch": p.batch, "kernel": p.kernel,
                             "groups": list(p.groups), "cardinals": p.cardinals, "runs": p.runs, "warmup": p.warmup,
                             "statistic": "mean", "threads": self.ctx.threads, "unit": "ms per call of the batch"},
                "paper": paper.as_dict(), "rows": self.rows, "skipped": self.skipped}

    def lines(self, backend: str) -> list[tuple[str, str]]:
        """(variant, label) of each line of ``backend``'s Figure 5 table, in run order."""
        out = {}
        for r in self.rows:
            if r["backend"] == backend and r["variant"] != "baseline":
                out.setdefault(r["variant"], "torch eager" if backend == "torch" else f"{backend} {r['variant']}")
        return list(out.items())

    def cell(self, backend: str, variant: str, protocol: str, k: int) -> dict | None:
        for r in self.rows:
            if r["backend"] == backend and r["protocol"] == protocol and r["k"] == k and r["variant"] == variant:
                return r
        return None

    def baseline(self, backend: str, line: str) -> dict | None:
        """The plain-conv row timed beside ``line`` ("<form> <protocol>")."""
        return next((r for r in self.rows if r["backend"] == backend and r["protocol"] == "baseline"
                     and r["timed_with"] == line), None)

    def tables(self) -> list[Table]:
        """One table per backend, in run order (each already shown when its timing ended)."""
        return [self.backend_table(b) for b in self.backends] or [self.backend_table(None)]

    def backend_table(self, backend: str | None) -> Table:
        """The paper's row and ``backend``'s lines; the first table also carries the protocol and the notes
        that belong to no backend's table."""
        ks = list(self.p.groups)
        header = ["engine", "protocol", "base", *[f"k={k}" for k in ks], *[f"k={k}" for k in ks]]
        groups = [("", 2), ("ms per call (mean)", 1 + len(ks)), ("ratio to own baseline", len(ks))]
        rows = []
        for protocol in PROTOCOLS[1:]:
            label = "paper i5-2500 (4 cores)" if protocol == PROTOCOLS[1] else ""
            rows.append([label, protocol, fmt(paper.BASELINE_MS),
                         *[fmt(paper.paper_ms(protocol, k)) for k in ks],
                         *[fmt(paper.paper_ratio(protocol, k)) for k in ks]])
        for variant, label in self.lines(backend):
            for protocol in PROTOCOLS[1:]:
                cells = [self.cell(backend, variant, protocol, k) for k in ks]
                base = self.baseline(backend, f"{variant} {protocol}")
                rows.append([label if protocol == PROTOCOLS[1] else "", protocol, _ms(base),
                             *[_ms(c) for c in cells], *[fmt((c or {}).get("ratio")) for c in cells]])
        first = backend is None or backend == self.backends[0]
        notes = self._protocol_notes() if first else ["protocol and paper figures as in the first layer table"]
        notes += self._problem_notes(backend, first)
        return Table(f"layer (paper Figure 5) on {backend or 'no backend'}: fixed model size = k groups of C/k "
                     "outputs; fixed FLOPs = k groups of C outputs", header, rows, notes, groups, left=2)

    def _protocol_notes(self) -> list[str]:
        p = self.p
        return [f"one sparse conv {p.channels}->{p.channels}, {p.kernel}x{p.kernel}, batch {p.batch} of "
                f"{p.patch}x{p.patch} patches, d={p.cardinals}; mean of {p.runs} runs after {p.warmup} warm-up, each "
                f"line's configurations and its own baseline interleaved in rounds; {self.ctx.threads} threads for "
                "every backend",
                "paper: batch 100, mean of 100 runs, ms as printed in Figure 5 (they fit per-patch time; "
                "compare the ratios)"]

    def _problem_notes(self, backend: str | None, first: bool) -> list[str]:
        """Skips and failures of ``backend``; the first table also gets the skips of backends without a table."""
        def mine(what: str) -> bool:
            owner = what.split()[0]
            return owner == backend or (first and owner not in self.backends)

        notes = [f"skipped {what}: {why}" for what, why in self.skipped.items() if mine(what)]
        for r in self.rows:
            if r["backend"] != backend:
                continue
            if "error" in r:
                notes.append(f"failed {r['backend']} {r['variant']} {r['protocol']} k={r['k']}: {r['error']}")
            elif r["max_abs_vs_reference"] > 1e-3:
                notes.append(f"{r['backend']} {r['variant']} {r['protocol']} k={r['k']}: output differs from the "
                             f"reference layer by {r['max_abs_vs_reference']:.3g}")
        return notes


def _ms(row: dict | None) -> str:
    if row is None or not ("ms" in row or "error" in row):
        return "-"
    return "fail" if "error" in row else fmt(row["ms"], ".2f" if row["ms"] < 100 else ".1f")


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)
