"""The parity suite: every engine, every precision, against the PyTorch reference.

Float engines (fp32 everywhere, fp16 in OpenVINO) are checked on random patches, on the tiles host
tiling cuts from a real photo (engine and reference on the *same* tiles) and on whole real photos
(host tiling against the reference's own whole-image evaluation), with the documented tolerances of
:mod:`nsr_deploy.checks.verdicts`: max abs 1e-4 for fp32; 5e-3 and at least 45 dB for fp16. int8 is
judged on the task, as its export gate is: PSNR against ground truth may drop at most 0.3 dB from the
fp32 reference on the same degraded photos (computed here, independently of the exporter's gate).

OpenVINO fp16 and int8 are built in the first conv form the run uses (they differ from fp32 in
weights, not in graph structure). The photos are the bundled samples: the product's own data.
"""

from __future__ import annotations

import time

from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.engines import EngineSpec, engine_specs
from nsr_deploy.bench.report.table import Table, fmt
from nsr_deploy.checks.gates import float_parity, task_drop_parity
from nsr_deploy.checks.samples import as_chw, sample_images
from nsr_deploy.checks.verdicts import FP16_MIN_PSNR, INT8_MAX_TASK_DROP_DB, tolerance_of
from nsr_deploy.core.errors import NSRError


def parity_specs(ctx: BenchContext) -> tuple[list[EngineSpec], dict[str, str]]:
    specs, skipped = engine_specs(ctx.backends, ctx.settings.conv_forms, ctx.loaded.config)
    ov = [s for s in specs if s.backend == "openvino"]
    if ov:
        for precision in ctx.settings.parity.openvino_precisions:
            if precision != "fp32":
                specs.append(EngineSpec("openvino", ov[0].form, precision))
        if "int8" not in ctx.settings.parity.openvino_precisions:
            skipped["openvino int8"] = f"not in this preset ({ctx.settings.mode}): NNCF calibration takes minutes"
    return specs, skipped


def summarise(spec: EngineSpec, checks: list[dict], threads: int) -> dict:
    """One engine's row: its checks, the worst difference, the lowest PSNR and the verdict."""
    psnrs = [c["psnr"] for c in checks if c.get("psnr") is not None and c["check"] != "task_psnr_drop"]
    return {"engine": spec.label, **spec.as_dict(), "threads": threads, "checks": checks,
            "max_abs": max(c["max_abs"] for c in checks), "min_psnr": min(psnrs) if psnrs else None,
            "tolerance": checks[0]["tolerance"], "passed": all(c["passed"] for c in checks)}


def check_engine(loaded, runner, precision: str, images: list[tuple]) -> list[dict]:
    """The checks of one engine as dicts: the float checks, or int8's task-PSNR drop."""
    if precision == "int8":
        from nsr_deploy.checks.task import task_of
        from nsr_deploy.runtimes.engine import Engine

        result, _ = task_drop_parity(loaded.net, Engine(runner, loaded.config), images, task_of(loaded))
        return [result.to_report()]
    return [r.to_report() for r in float_parity(loaded.net, runner, precision, as_chw(images))]


class ParitySuite:
    name = "parity"

    def __init__(self, ctx: BenchContext):
        self.ctx = ctx
        self.rows: list[dict] = []
        self.specs, self.skipped = parity_specs(ctx)
        self._images = None

    @property
    def images(self):
        if self._images is None:
            self._images = sample_images(self.ctx.loaded.config.channels, self.ctx.settings.parity.images)
        return self._images

    def jobs(self) -> list[Job]:
        return [Job(f"parity {s.label}", lambda s=s: self.check(s)) for s in self.specs]

    def check(self, spec: EngineSpec) -> None:
        t0 = time.perf_counter()
        try:
            runner = self.ctx.factory.runner(spec)
            with runner:
                checks = check_engine(self.ctx.loaded, runner, spec.precision, self.images)
        except NSRError as e:
            limit = INT8_MAX_TASK_DROP_DB if spec.precision == "int8" else tolerance_of(spec.precision)
            self.rows.append({"engine": spec.label, **spec.as_dict(), "threads": self.ctx.threads, "checks": [],
                              "tolerance": limit, "passed": False, "error": str(e)})
            return
        row = summarise(spec, checks, self.ctx.threads)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        self.rows.append(row)

    def result(self) -> dict:
        return {"passed": all(r["passed"] for r in self.rows), "rows": self.rows, "skipped": self.skipped,
                "tolerances": {"fp32_max_abs": tolerance_of("fp32"), "fp16_max_abs": tolerance_of("fp16"),
                               "fp16_min_psnr_db": FP16_MIN_PSNR, "int8_max_task_drop_db": INT8_MAX_TASK_DROP_DB},
                "images": [name for name, _ in self.images] if self.rows else []}

    def tables(self) -> list[Table]:
        header = ["engine", "random patches", "real tiles", "real images", "min PSNR dB", "limit", "result"]
        rows = [self._row(r) for r in self.rows]
        notes = [f"max abs difference from the PyTorch reference; images: {', '.join(n for n, _ in self.images)}"
                 if self.rows else "no engines checked"]
        notes += [f"skipped {what}: {why}" for what, why in self.skipped.items()]
        notes += [f"{r['engine']}: {r['error']}" for r in self.rows if "error" in r]
        return [Table("parity: engines vs the PyTorch reference (same tiles, same images)", header, rows, notes)]

    @staticmethod
    def _row(r: dict) -> list[str]:
        verdict = "ok" if r["passed"] else "FAIL"
        if r["precision"] == "int8":
            limit = f"drop <= {r['tolerance']:g} dB"
        else:
            limit = f"{r['tolerance']:g}" + (f" & {FP16_MIN_PSNR:g} dB" if r["precision"] == "fp16" else "")
        if "error" in r:
            return [r["engine"], "-", "-", "-", "-", limit, "FAIL"]
        if r["precision"] == "int8":
            c = r["checks"][0]
            return [r["engine"], "-", "-", f"task drop {c['drop_db']:.3f} dB", "-", limit, verdict]
        by = {}
        for c in r["checks"]:
            by[c["check"]] = max(by.get(c["check"], 0.0), c["max_abs"])
        return [r["engine"], *[fmt(by.get(k), ".2e") for k in ("random_patches", "real_tiles", "real_image")],
                fmt(r["min_psnr"], ".1f", "inf"), limit, verdict]
