"""The model suite: whole-network latency, the way an app runs it, beside the dense twin and sgemm.

Two measurements per engine (PyTorch eager through the torch runner, and every conv form of every
exported backend), plus the dense twin (same shapes, k = d = 1, random weights) in each runtime:

* **image**: one ``H`` x ``W`` input (default 256x256, cut from a bundled photo) restored end to end
  through :class:`~nsr_deploy.runtimes.engine.Engine` (host tiling, batching, blending) in each
  tiling mode; and the reference's own evaluation path (``reference_forward``: PyTorch eager with the
  trainer's overlapping tiling), which every speed-up is measured against.
* **patch batch**: 16 patches of the model's patch size (48x48) straight through the runner: the
  patch-batch protocol of docs/performance, where the sparse model and its twin do exactly the same work, so
  "within 1.10x of the dense twin in the same runtime" and "vs PyTorch eager" are read here. Every
  engine is opened first and their runs are then interleaved (:func:`~nsr_deploy.core.timing.measure_interleaved`).

Figures: median and p90 after warm-up; megapixels/s of input; effective GFLOP/s = the model's FLOPs
per pixel (``NSRConfig.flops_per_pixel``: one mixed kernel per sparse conv, routing and mixing
included) x pixels computed (overlapping tiles count every time) / median time; and that as a
fraction of this machine's sgemm rate measured in the same run with the same threads (``of_sgemm``), and
of the GEMM peak at the row's own precision (``of_peak``: a bf16 engine against the bf16 peak, int8
against int8; fp32 sgemm, named so, where that precision's peak could not be measured).
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.engines import EngineSpec, engine_specs
from nsr_deploy.bench.images import bench_input
from nsr_deploy.bench.machine import peak_of
from nsr_deploy.bench.report.table import Table, fmt
from nsr_deploy.bench.suites.precisions import PRECISION_BACKEND, compile_spec, openvino_auto_form, precision_specs
from nsr_deploy.bench.torch_compile import COMPILE_FORM
from nsr_deploy.checks.compare import random_patches
from nsr_deploy.core.capabilities import AT_LOAD_FORM, BENCH_PRECISIONS, TWIN_BACKENDS
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.timing import Timing, measure, measure_rows

REFERENCE_PATH = "reference path (torch eager)"
# a row whose p90 is this far above its median ran while the machine was busy for a good part of its
# runs (seen on a shared 2-core VM: one twin row 1.31, the rest <= 1.15); a ratio built on it is marked
NOISY_SPREAD = 1.25


def _row(rows: list[dict], **match) -> dict | None:
    """The first timed row matching every ``key=value``."""
    for r in rows:
        if "median_ms" in r and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _median(rows: list[dict], **match) -> float | None:
    row = _row(rows, **match)
    return row["median_ms"] if row else None


def mark_spread(rows: list[dict]) -> None:
    """Give every timed row its ``spread`` (p90 / median) and ``noisy`` (spread > NOISY_SPREAD)."""
    for r in rows:
        if r.get("median_ms") and r.get("p90_ms"):
            r["spread"] = round(r["p90_ms"] / r["median_ms"], 3)
            r["noisy"] = r["spread"] > NOISY_SPREAD


def twin_ratios(rows: list[dict]) -> None:
    """``vs_dense_twin`` of every sparse row (against the twin in the same runtime at the same precision),
    and ``vs_dense_twin_noisy`` when either row is noisy (:func:`mark_spread`, applied here first)."""
    mark_spread(rows)
    for r in rows:
        twin = _row(rows, backend=r["backend"], dense_twin=True, precision=r["precision"])
        ratio = r["median_ms"] / twin["median_ms"] if "median_ms" in r and twin and not r["dense_twin"] else None
        r["vs_dense_twin"] = round(ratio, 3) if ratio else None
        r["vs_dense_twin_noisy"] = bool(ratio and (r.get("noisy") or twin.get("noisy")))


def peak_figures(gflops: float, precision: str, peaks: dict) -> dict:
    """GFLOP/s as a share of fp32 sgemm and of the GEMM peak at ``precision`` (:func:`.machine.peak_of`)."""
    sgemm = (peaks.get("fp32") or {}).get("gflops")
    peak, name = peak_of(precision, peaks)
    peak = (peak or {}).get("gflops")
    return {"gflops": round(gflops, 2), "of_sgemm": round(gflops / sgemm, 3) if sgemm else None,
            "of_peak": round(gflops / peak, 3) if peak else None, "peak": name}


def auto_choices(rows: list[dict], openvino_form: str) -> list[dict]:
    """What ``backend="auto"`` runs, on this machine, from a ``--target openvino`` folder of each precision,
    read off this run's patch rows: such a folder holds model.onnx (ONNX Runtime runs it as the NCHWc engine
    it builds at load) and model.xml (OpenVINO, the ``auto`` form at that precision); auto times both on a
    patch batch and runs the faster (nsr_deploy.runtimes.auto_choice). Without an ``nchwc-at-load`` row, the
    ``nchwc`` export's row stands for it (the same blocked kernels, within 5%: docs/performance)."""
    ort = _row(rows, backend="onnxruntime", form=AT_LOAD_FORM, dense_twin=False) \
        or _row(rows, backend="onnxruntime", form="nchwc", dense_twin=False)
    out = []
    for precision in BENCH_PRECISIONS:
        ov = _row(rows, backend=PRECISION_BACKEND, form=openvino_form, precision=precision, dense_twin=False)
        engines = {r["engine"]: r["median_ms"] for r in (ov, ort) if r}
        if len(engines) < 2:
            continue
        best = min(engines, key=engines.get)
        folder = "--target openvino" + (f" --precision {precision}" if precision != "fp32" else "")
        out.append({"folder": folder, "precision": precision, "engine": best, "median_ms": engines,
                    "vs_openvino": round(engines[best] / ov["median_ms"], 3) if ov else None})
    return out


class ModelSuite:
    name = "model"

    def __init__(self, ctx: BenchContext):
        self.ctx = ctx
        self.p = ctx.settings.model
        self.specs, self.skipped = engine_specs(ctx.backends, ctx.settings.conv_forms, ctx.loaded.config)
        self.twins = [EngineSpec(b, None if b == "torch" else "matmul", twin=True)
                      for b in ctx.backends.used if b in TWIN_BACKENDS]
        # patch batch only: each reduced precision (sparse and twin) and torch.compile, the competitor
        self.precision_specs, skipped = precision_specs(ctx.backends.used, ctx.loaded.config)
        self.precision_specs += compile_spec(ctx.backends.used)
        self.precision_skipped = skipped  # noted under the patch table, where those rows would be
        self.image_rows: list[dict] = []
        self.patch_rows: list[dict] = []
        self._x = None
        self._patch_calls: list = []  # (row, flops per pixel, open runner) prepared, not yet timed
        self._patch_runners = ExitStack()

    @property
    def config(self):
        return self.ctx.loaded.config

    @property
    def image(self) -> np.ndarray:
        if self._x is None:
            self._x = bench_input(self.config.channels, self.p.height, self.p.width)
        return self._x

    @property
    def peak_precisions(self) -> tuple[str, ...]:
        """The reduced precisions this suite times, each read against its own GEMM peak."""
        return tuple(dict.fromkeys(s.precision for s in self.precision_specs if s.precision != "fp32"))

    def jobs(self) -> list[Job]:
        jobs = [Job("model reference path", self.time_reference_path)]
        for spec in self.specs:
            jobs += [Job(f"model {spec.label} {t}", lambda s=spec, t=t: self.time_image(s, t)) for t in self.p.tilings]
        jobs += [Job(f"model {s.label}", lambda s=s: self.time_image(s, "exact")) for s in self.twins]
        jobs += [Job(f"patches {s.label}", lambda s=s: self.prepare_patches(s))
                 for s in self.specs + self.twins + self.precision_specs]
        jobs.append(Job("patches timing", self.time_patches))
        return jobs

    # -- measuring ---------------------------------------------------------------------------
    def _figures(self, timing: Timing, flops_per_pixel: float, pixels_computed: int, precision: str = "fp32") -> dict:
        return {**timing.as_dict(), **peak_figures(flops_per_pixel * pixels_computed / (timing.median / 1e3) / 1e9,
                                                   precision, self.ctx.peaks)}

    def time_reference_path(self) -> None:
        import torch

        from nsr_deploy.models.reference import reference_forward
        from nsr_deploy.runtimes.host.tiling import make_plan

        cfg, h, w = self.config, self.p.height, self.p.width
        x = torch.from_numpy(self.image[None])
        timing = measure(lambda: reference_forward(self.ctx.loaded.net, x), self.p.runs, self.p.warmup)
        plan = make_plan("reference", h, w, cfg.patch_size, cfg.sparse, cfg.receptive_radius())
        self.image_rows.append({"engine": REFERENCE_PATH, "backend": "torch", "form": None, "dense_twin": False,
                                "tiling": "reference", "pixels_computed": plan.pixels_computed,
                                "compute_ratio": round(plan.compute_ratio, 3), "threads": self.ctx.threads,
                                "mp_per_s": round(h * w / 1e6 / (timing.median / 1e3), 4),
                                **self._figures(timing, cfg.flops_per_pixel(), plan.pixels_computed)})

    def time_image(self, spec: EngineSpec, tiling: str) -> None:
        from nsr_deploy.runtimes.engine import Engine

        h, w = self.p.height, self.p.width
        row = {"engine": spec.label, **spec.as_dict(), "tiling": tiling, "threads": self.ctx.threads}
        try:
            cfg = self.ctx.factory.model_of(spec).config
            with self.ctx.factory.runner(spec) as runner:
                engine = Engine(runner, cfg, "reference" if tiling == "exact" else tiling)
                timing = measure(lambda: engine.restore_chw(self.image), self.p.runs, self.p.warmup)
                stats = engine.last_stats
        except NSRError as e:
            self.image_rows.append({**row, "error": str(e)})
            return
        row.update({"tiling": stats["tiling"], "pixels_computed": stats["pixels_computed"],
                    "compute_ratio": stats["compute_ratio"], "mp_per_s": round(h * w / 1e6 / (timing.median / 1e3), 4),
                    **self._figures(timing, cfg.flops_per_pixel(), stats["pixels_computed"])})
        self.image_rows.append(row)

    def prepare_patches(self, spec: EngineSpec) -> None:
        """Build and open ``spec``'s runner; every engine's patch batch is timed together, at the end."""
        cfg = self.config
        n, size = self.p.patch_batch, cfg.patch_size
        row = {"engine": spec.label, **spec.as_dict(), "patches": n, "patch": size, "threads": self.ctx.threads}
        try:
            flops = self.ctx.factory.model_of(spec).config.flops_per_pixel()
            runner = self._patch_runners.enter_context(self.ctx.factory.runner(spec))
        except NSRError as e:
            self.patch_rows.append({**row, "error": str(e)})
            return
        self.patch_rows.append(row)
        self._patch_calls.append((row, flops, runner))

    def time_patches(self) -> None:
        """The same patches through every prepared runner, interleaved (:func:`measure_interleaved`): the
        figures are ratios between engines (to the dense twin, to eager), so the machine's drift must
        not fall between them."""
        cfg, entries = self.config, self._patch_calls
        n, size = self.p.patch_batch, cfg.patch_size
        x = random_patches(cfg.channels, n, size, seed=self.ctx.settings.seed)
        valid = np.ones((n, 1, size, size), np.float32)
        self._patch_calls = []
        try:
            timings = measure_rows([(row, lambda r=runner: r.infer(x, valid)) for row, _, runner in entries],
                                   self.p.patch_runs, self.p.patch_warmup)
        finally:
            self._patch_runners.close()
        for (row, flops, _), timing in zip(entries, timings):
            row.update(self._figures(timing, flops, n * size * size, row["precision"]))

    # -- results -----------------------------------------------------------------------------
    def result(self) -> dict:
        ref = _median(self.image_rows, engine=REFERENCE_PATH)
        for r in self.image_rows:
            r["speedup_vs_reference_path"] = round(ref / r["median_ms"], 3) if ref and "median_ms" in r else None
        eager = _median(self.patch_rows, backend="torch", form=None, dense_twin=False)
        compiled = _median(self.patch_rows, backend="torch", form=COMPILE_FORM)
        twin_ratios(self.patch_rows)
        for r in self.patch_rows:
            ok = "median_ms" in r
            r["vs_torch_eager"] = round(r["median_ms"] / eager, 3) if ok and eager else None
            r["vs_torch_compile"] = round(r["median_ms"] / compiled, 3) if ok and compiled else None
        cfg, p = self.config, self.p
        return {"model": self.ctx.loaded.name, "config": cfg.to_dict(),
                "mflops_per_pixel": round(cfg.flops_per_pixel() / 1e6, 4),
                "dense_twin_mflops_per_pixel": round(cfg.dense_twin().flops_per_pixel() / 1e6, 4),
                "protocol": {"image": [p.height, p.width], "runs": p.runs, "warmup": p.warmup,
                             "tilings": list(p.tilings), "patch_batch": p.patch_batch, "patch": cfg.patch_size,
                             "patch_runs": p.patch_runs, "patch_warmup": p.patch_warmup,
                             "statistics": "median and p90", "threads": self.ctx.threads},
                "sgemm": self.ctx.sgemm, "build_seconds": self.ctx.factory.build_seconds,
                "image": self.image_rows, "patch_batch": self.patch_rows,
                "auto": auto_choices(self.patch_rows, openvino_auto_form(cfg)),
                "skipped": {**self.skipped, **self.precision_skipped}}

    def tables(self) -> list[Table]:
        return [self._image_table(), self._patch_table()]

    def _image_table(self) -> Table:
        cfg, p = self.config, self.p
        header = ["engine", "tiling", "pixels", "median ms", "p90 ms", "MP/s", "GFLOP/s", "of sgemm", "speed-up"]
        rows = []
        for r in self.image_rows:
            if "error" in r:
                rows.append([r["engine"], r["tiling"], *["-"] * 6, "failed"])
                continue
            rows.append([r["engine"], r["tiling"], f"{r['compute_ratio']:.2f}x", fmt(r["median_ms"], ".1f"),
                         fmt(r["p90_ms"], ".1f"), fmt(r["mp_per_s"], ".3f"), fmt(r["gflops"], ".1f"),
                         fmt(r["of_sgemm"], ".0%"), fmt(r["speedup_vs_reference_path"], ".2f")])
        sgemm = self.ctx.sgemm or {}
        notes = [f"median / p90 of {p.runs} runs after {p.warmup} warm-up; {self.ctx.threads} threads for every "
                 f"backend; sgemm {fmt(sgemm.get('gflops'), '.1f')} GFLOP/s ({sgemm.get('library')}, "
                 f"{sgemm.get('size')}^3, {sgemm.get('threads')} threads, this run)",
                 "pixels: pixels computed / input pixels (overlapping tiles count each time); MP/s of input; "
                 "GFLOP/s: the model's FLOPs per pixel x pixels computed / median",
                 "speed-up: over the reference path, the trainer's own evaluation (PyTorch eager, overlapping tiles)",
                 "dense twin: the same network with k = d = 1 (random weights); dense models tile exactly"]
        notes += [f"skipped {what}: {why}" for what, why in self.skipped.items()]
        notes += [f"{r['engine']} ({r['tiling']}): {r['error']}" for r in self.image_rows if "error" in r]
        title = (f"model: {self.ctx.loaded.name} ({cfg.kind} x{cfg.scale}, {cfg.num_blocks} blocks x {cfg.units}, "
                 f"k={cfg.groups} d={cfg.cardinals}, {cfg.flops_per_pixel() / 1e6:.3f} MFLOP/px) on a "
                 f"{p.height}x{p.width} input")
        return Table(title, header, rows, notes, left=2)

    def _patch_table(self) -> Table:
        p = self.p
        header = ["engine", "median ms", "p90 ms", "GFLOP/s", "of peak", "/ dense twin", "/ torch eager",
                  "/ torch.compile"]
        rows = []
        for r in self.patch_rows:
            if "median_ms" not in r:
                rows.append([r["engine"], *["-"] * 6, "failed" if "error" in r else "-"])
                continue
            rows.append([r["engine"], fmt(r["median_ms"], ".1f"), fmt(r["p90_ms"], ".1f"), fmt(r["gflops"], ".1f"),
                         fmt(r["of_peak"], ".0%"),
                         fmt(r["vs_dense_twin"], ".2f") + ("~" if r.get("vs_dense_twin_noisy") else ""),
                         fmt(r["vs_torch_eager"], ".2f"),
                         fmt(r["vs_torch_compile"], ".2f")])
        cfg = self.config
        notes = [f"median / p90 of {p.patch_runs} runs after {p.patch_warmup} warm-up, straight through each runner; "
                 "every engine's runs interleaved in rounds, so that drift of the machine moves them alike",
                 "latency ratios (lower is faster): engine / the dense twin in the same runtime at the same "
                 "precision; engine / PyTorch eager and / torch.compile (inductor, CPU) on the same patches",
                 "bf16 / int8 rows: the sparse model as --target openvino --conv-form auto exports it, and the twin, "
                 "both at that precision (bf16: INFERENCE_PRECISION_HINT=bf16; int8: the gated int8 export)",
                 self._peak_note()]
        noisy = [r["engine"] for r in self.patch_rows if r.get("noisy")]
        if noisy:
            notes.append(f"~: the ratio rests on a row whose p90 is over {NOISY_SPREAD - 1:.0%} above its median "
                         f"({', '.join(noisy)}): its runs were noisy; rerun on an idle machine before quoting it")
        notes += [f"auto on a {a['folder']} folder, this machine: {a['engine']} ("
                  + ", ".join(f"{e} {ms:.1f} ms" for e, ms in a["median_ms"].items()) + ")"
                  for a in auto_choices(self.patch_rows, openvino_auto_form(cfg))]
        notes += [f"absent {what}: {why}" for what, why in self.precision_skipped.items()]
        notes += [f"{r['engine']}: {r['error']}" for r in self.patch_rows if "error" in r]
        return Table(f"patch batch: {p.patch_batch} patches of {cfg.patch_size}x{cfg.patch_size} (the patch-batch "
                     f"protocol)", header, rows, notes)

    def _peak_note(self) -> str:
        """Which peak each precision's rows are read against, with its rate, so that the share is like with like."""
        names = dict.fromkeys((r["precision"], r["peak"]) for r in self.patch_rows if r.get("peak"))
        parts = []
        for precision, name in names:
            peak = peak_of(precision, self.ctx.peaks)[0] or {}
            parts.append(f"{precision} rows / {name} {fmt(peak.get('gflops'), '.1f')} GFLOP/s ({peak.get('library')})")
        sgemm = self.ctx.sgemm or {}
        return (f"of peak: GFLOP/s / this run's GEMM rate at the row's precision ({sgemm.get('size')}^3, "
                f"{sgemm.get('threads')} threads, median): " + "; ".join(parts))
