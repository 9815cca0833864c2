"""The quality suite: PSNR / SSIM on the paper's test sets, reference and engines side by side.

As the paper's Tables 4-6: super-resolution on CSet5 and CSet14 (bicubic downscaling; PSNR and SSIM
on the Y channel with ``scale`` border pixels shaved), denoising on BSD68 at sigma 15 / 25 / 50
(additive Gaussian noise, unclipped, the DnCNN protocol) and JPEG deblocking on BSD68 and CSet14 at
quality 10 / 20 / 30 / 40, nothing shaved (a grey model sees the sets in grey). Outputs are rounded
to 8 bits before scoring. Degradations are
:mod:`nsr_deploy.core.degrade`'s, the ones the bundled models were trained with (through
``checks.task.degrade``, shared with the int8 gate), with a fixed noise seed.

Methods: the classic baseline (bicubic upscaling, or the degraded input itself), the PyTorch
reference (the trainer's whole-image evaluation) and one fp32 engine per backend (the first conv
form of the run: engines differ from the reference by < 1e-4, the parity suite checks each form).
The task is the model's (its metadata, else what its shape suggests: see ``task_of``); a denoiser
is scored at every noise level (15 / 25 / 50, as Table 5), whatever level it was trained for.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.bench.context import BenchContext, Job
from nsr_deploy.bench.engines import EngineSpec, engine_specs
from nsr_deploy.bench.report.table import Table
from nsr_deploy.core.errors import NSRError

REFERENCE = "reference (torch)"


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """float32 CHW in [0, 1] -> uint8 HxW / HxWxC, rounded (what a saved image holds)."""
    y = np.clip(np.rint(chw * 255.0), 0, 255).astype(np.uint8)
    return y[0] if y.shape[0] == 1 else y.transpose(1, 2, 0)


def score(restored: np.ndarray, ground_truth: np.ndarray, task) -> tuple[float, float]:
    """(PSNR, SSIM) of a uint8 result against ground truth, with the paper's conventions for ``task``."""
    from nsr_deploy.checks.metrics import psnr, ssim

    sr = task.kind == "sr"
    shave = task.scale if sr else 0
    return psnr(restored, ground_truth, shave, y_only=sr), ssim(restored, ground_truth, shave, y_only=sr)


def baseline(x_chw: np.ndarray, ground_truth: np.ndarray, task) -> np.ndarray:
    """The classic baseline: bicubic upscaling of the low-resolution input, or the degraded input."""
    from nsr_deploy.core.degrade import bicubic_up

    if task.kind == "sr":
        return bicubic_up(to_uint8(x_chw), task.scale)
    return to_uint8(x_chw)


class QualitySuite:
    name = "quality"

    def __init__(self, ctx: BenchContext):
        from nsr_deploy.checks.task import task_of

        self.ctx = ctx
        self.q = ctx.settings.quality
        self.task = task_of(ctx.loaded)
        specs, _ = engine_specs(ctx.backends, ctx.settings.conv_forms, ctx.loaded.config)
        first: dict[str, EngineSpec] = {}
        for spec in specs:
            if spec.backend != "torch":  # the torch engine is the reference, already a column
                first.setdefault(spec.backend, spec)
        self.engines = list(first.values())
        self.rows: list[dict] = []
        self.skipped: dict[str, str] = {}
        self._inputs: dict[tuple, list] = {}

    def tasks(self) -> list:
        from nsr_deploy.checks.task import Task

        t = self.task
        if t.kind == "sr":
            return [t]
        if t.kind == "noise":
            return [Task("noise", 1, sigma=float(s)) for s in self.q.sigmas]
        return [Task("jpeg", 1, quality=int(q)) for q in self.q.qualities]

    def datasets(self) -> list[tuple[str, int | None]]:
        if self.task.kind == "sr":
            return [(name, self.q.max_images_sr) for name in self.q.sr_sets]
        extra = self.q.jpeg_extra_sets if self.task.kind == "jpeg" else ()
        return [(self.q.grey_set, self.q.max_images_grey), *[(name, self.q.max_images_sr) for name in extra]]

    def available_datasets(self) -> list[tuple[str, int | None]]:
        data = self.ctx.settings.data_dir
        out = []
        for name, limit in self.datasets():
            if data is None:
                self.skipped[name] = "no data folder: set NSR_DATA or pass --data"
            elif not (data / name).is_dir():
                self.skipped[name] = f"not found under {data}"
            else:
                out.append((name, limit))
        return out

    def methods(self) -> list[str | EngineSpec]:
        return ["baseline", REFERENCE, *self.engines]

    def jobs(self) -> list[Job]:
        jobs = []
        for dataset, limit in self.available_datasets():
            for task in self.tasks():
                for method in self.methods():
                    label = method if isinstance(method, str) else method.label
                    jobs.append(Job(f"quality {dataset} {_level(task)} {label}",
                                    lambda d=dataset, n=limit, t=task, m=method: self.evaluate(d, n, t, m)))
        return jobs

    def inputs(self, dataset: str, limit: int | None, task) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, degraded float CHW input, uint8 ground truth), made once per dataset and level."""
        from nsr_deploy.bench.images import dataset_images
        from nsr_deploy.checks.task import degrade

        key = (dataset, _level(task))
        if key not in self._inputs:
            rng = np.random.default_rng(self.ctx.settings.seed)
            images = dataset_images(self.ctx.settings.data_dir, dataset, self.ctx.loaded.config.channels, limit)
            self._inputs[key] = [(name, *degrade(clean, task, rng)) for name, clean in images]
        return self._inputs[key]

    def evaluate(self, dataset: str, limit: int | None, task, method) -> None:
        label = method if isinstance(method, str) else method.label
        row = {"dataset": dataset, "task": task.as_dict(), "level": _level(task), "method": label}
        try:
            scores = [score(out, gt, task) for out, gt in self._restore_all(dataset, limit, task, method)]
        except NSRError as e:
            self.rows.append({**row, "error": str(e)})
            return
        row.update({"images": len(scores), "psnr": round(float(np.mean([s[0] for s in scores])), 3),
                    "ssim": round(float(np.mean([s[1] for s in scores])), 4)})
        self.rows.append(row)

    def _restore_all(self, dataset, limit, task, method):
        inputs = self.inputs(dataset, limit, task)
        if method == "baseline":
            return [(baseline(x, gt, task), gt) for _, x, gt in inputs]
        if method == REFERENCE:
            import torch

            from nsr_deploy.models.reference import reference_forward

            net = self.ctx.loaded.net
            return [(to_uint8(reference_forward(net, torch.from_numpy(x[None]))[0].numpy()), gt)
                    for _, x, gt in inputs]
        from nsr_deploy.runtimes.engine import Engine

        with self.ctx.factory.runner(method) as runner:
            engine = Engine(runner, self.ctx.loaded.config)
            return [(to_uint8(engine.restore_chw(x)), gt) for _, x, gt in inputs]

    def result(self) -> dict:
        return {"task": self.task.as_dict(), "rows": self.rows, "skipped": self.skipped,
                "conventions": "PSNR/SSIM of 8-bit outputs; SR on Y (BT.601) with scale pixels shaved; grey tasks "
                               "on the grey image, nothing shaved; SSIM: Gaussian 11x11, sigma 1.5"}

    def tables(self) -> list[Table]:
        methods = [m if isinstance(m, str) else m.label for m in self.methods()]
        base_name = "bicubic" if self.task.kind == "sr" else "degraded input"
        header = ["set", "degradation", "images", *[base_name if m == "baseline" else m for m in methods]]
        rows = []
        for dataset, _ in self.datasets():
            for task in self.tasks():
                cells = {r["method"]: r for r in self.rows if r["dataset"] == dataset and r["level"] == _level(task)}
                if not cells:
                    continue
                count = next((c["images"] for c in cells.values() if "images" in c), "-")
                rows.append([dataset, _level(task), str(count), *[_cell(cells.get(m)) for m in methods]])
        notes = ["PSNR dB / SSIM, mean over the images; " + ("Y channel, scale pixels shaved" if self.task.kind == "sr"
                                                              else "grey, nothing shaved")]
        notes += [f"skipped {what}: {why}" for what, why in self.skipped.items()]
        notes += [f"{r['method']} on {r['dataset']} {r['level']}: {r['error']}" for r in self.rows if "error" in r]
        return [Table(f"quality: {self.ctx.loaded.name}, {self.task.describe()}", header, rows, notes, left=2)]


def _level(task) -> str:
    if task.kind == "sr":
        return f"bicubic x{task.scale}"
    if task.kind == "noise":
        return f"sigma {task.sigma:g}"
    return f"JPEG q{task.quality}"


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "failed"
    return f"{row['psnr']:.2f} / {row['ssim']:.4f}"
