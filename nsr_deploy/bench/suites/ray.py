"""The ray suite: corpus throughput of ``restore --ray`` (images/s) for pools of 1, 2, ... actors.

Not in the default run (it starts a Ray cluster and needs ``nsr-deploy[serve]``); ask for it with
``--suite ray``. The model is exported once to an ONNX folder in the run's scratch space, as a user
would before ``restore --ray``; the images are the first ones of the test set its task is scored on
(CSet14 for super-resolution, BSD68 for grey tasks). Each actor gets one thread, so a pool of 2 uses
what 2 cores offer; the measuring itself is :func:`nsr_deploy.bench.suites.ray_throughput.ray_throughput`.
"""

from __future__ import annotations

from importlib.util import find_spec

from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.report.table import Table, fmt
from nsr_deploy.core.errors import NSRError


class RaySuite:
    name = "ray"

    def __init__(self, ctx: BenchContext):
        self.ctx = ctx
        self.p = ctx.settings.ray
        self.data: dict | None = None
        self.skipped: dict[str, str] = {}
        self.error: str | None = None

    def why_not(self) -> str | None:
        if find_spec("ray") is None:
            return "ray[data] is not installed (pip install 'nsr-deploy[serve]')"
        if "onnxruntime" not in self.ctx.backends.used:
            return "the Ray actors run ONNX Runtime engines: onnxruntime is not among this run's backends"
        if self.ctx.settings.data_dir is None:
            return "no data folder: set NSR_DATA or pass --data"
        if not (self.ctx.settings.data_dir / self.dataset()).is_dir():
            return f"{self.dataset()} not found under {self.ctx.settings.data_dir}"
        if max(self.p.workers) > self.ctx.threads:
            return f"a pool of {max(self.p.workers)} one-thread actors needs {max(self.p.workers)} cores " \
                   f"(this run has {self.ctx.threads} threads)"
        return None

    def dataset(self) -> str:
        return "CSet14" if self.ctx.loaded.config.channels == 3 else "BSD68"

    def jobs(self) -> list[Job]:
        why = self.why_not()
        if why:
            self.skipped["ray"] = why
            return []
        return [Job("ray corpus throughput", self.measure)]

    def measure(self) -> None:
        from nsr_deploy.bench.suites.ray_throughput import ray_throughput
        from nsr_deploy.core.capabilities import DEPLOY_FORMS
        from nsr_deploy.exporters.pipeline import ExportOptions, export

        # a portable form: the nchwc filters are baked for this machine's MLAS block, a cluster may mix CPUs
        form = next((f for f in self.ctx.settings.conv_forms if f in DEPLOY_FORMS), "matmul")
        engine = self.ctx.scratch / "ray-engine"
        export(self.ctx.loaded, engine, "onnx", ExportOptions(conv_form=form, show_progress=False))
        images = self.ctx.scratch / "ray-images"
        images.mkdir()
        source = sorted(p for p in (self.ctx.settings.data_dir / self.dataset()).iterdir() if p.is_file())
        for path in source[:self.p.images]:
            (images / path.name).symlink_to(path.resolve())
        try:
            self.data = ray_throughput(str(engine), images, self.p.workers, threads=1, backend="onnxruntime",
                                       tiling=self.p.tiling, rounds=self.p.rounds, num_cpus=max(self.p.workers))
        except NSRError as e:
            self.error = str(e)
            return
        self.data["conv_form"] = form
        self.data["dataset"] = self.dataset()

    def result(self) -> dict:
        from dataclasses import asdict

        return {"protocol": asdict(self.p), "skipped": self.skipped, "error": self.error, **(self.data or {})}

    def tables(self) -> list[Table]:
        notes = [f"skipped: {why}" for why in self.skipped.values()] + ([f"failed: {self.error}"] if self.error else [])
        if self.data is None:
            return [Table("ray: corpus restore throughput", ["workers", "images/s"], [], notes)]
        d = self.data
        rows = [[str(r["workers"]), str(r["threads_per_worker"]), str(r["images"]), f"{r['seconds']:.2f}",
                 f"{r['images_per_s']:.3f}", fmt(r["steady_images_per_s"], ".3f"), f"{r['speedup']:.2f}x"]
                for r in d["pools"]]
        notes = [f"{d['dataset']} via restore --ray, {d['backend']} {d['conv_form']}, {d['tiling']} tiling; local "
                 f"cluster of {d['cluster_cpus']:g} CPUs; load average {d['load_average_1min'][0]} -> "
                 f"{d['load_average_1min'][1]}; medians of {d['pools'][0]['runs']} run(s)",
                 "images/s includes the pool's start-up (each actor loads its engine); steady/s is first to last "
                 "finished image", *notes]
        return [Table("ray: corpus restore throughput (images/s, 1 thread per actor)",
                      ["workers", "threads", "images", "seconds", "images/s", "steady/s", "speedup"], rows, notes)]
