"""What one bench run measures, and how hard: suites, backends, threads and the three presets.

Presets (``--quick``, the default, ``--paper``) differ only in sizes and run counts:

=========  ===============================  ==========================  =========================
preset     layer (Figure 5)                 model                       quality / parity images
=========  ===============================  ==========================  =========================
quick      batch 2, mean of 3 runs          median of 2 (patches: 3)    1 per set / 1 sample
default    batch 10, mean of 10 runs        median of 5 (patches: 10)   SR all, grey 8 / 4
paper      batch 100, mean of 100 runs      median of 20 (patches: 30)  every image / 4
=========  ===============================  ==========================  =========================

The layer protocol keeps the paper's shapes (64 in / 64 out channels, 64x64 patches, 3x3) in every
preset; only the batch and the number of runs shrink. Section 4.2 of the paper: batch 100, mean of
100 runs; that is ``--paper`` exactly. The default (batch 10, 10 runs, 2 warm-up calls) is about 1/100
of its work and finishes in under 3 minutes on a 2-core machine; batch 10 is also the batch the
project's layer goals are quoted at. See :mod:`nsr_deploy.bench.suites.layer` for the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from nsr_deploy.bench.machine import usable_cores
from nsr_deploy.core.budgets import CONFIG_BOUNDS, MAX_BATCH, check_memory, check_pixels, check_threads
from nsr_deploy.core.capabilities import BACKEND_NAMES, BENCH_DEFAULT_FORMS, BENCH_FORMS
from nsr_deploy.core.errors import NSRError

# layer first: its first table (PyTorch eager) is out within seconds, where parity builds every engine first
DEFAULT_SUITES = ("layer", "parity", "model", "quality")
SUITES = (*DEFAULT_SUITES, "ray")  # ray: only when asked for (it starts a Ray cluster; nsr-deploy[serve])
BACKENDS = BACKEND_NAMES
DEVICES = ("cpu",)
MODES = ("quick", "default", "paper")
CONV_FORMS = BENCH_FORMS
DEFAULT_CONV_FORMS = BENCH_DEFAULT_FORMS  # dense-mix only when asked for (see capabilities)
FLOAT_PRECISIONS = ("fp32", "fp16")
MAX_LAYER_CHANNELS = CONFIG_BOUNDS["block_width"][2]  # as wide as a model's widest conv may be


@dataclass(frozen=True)
class LayerProtocol:
    """Figure 5: one sparse conv, ``channels`` in and out, ``patch`` x ``patch`` patches, ``batch`` of
    them per call, mean of ``runs`` timed calls after ``warmup`` untimed ones, k in ``groups``."""

    channels: int = 64
    patch: int = 64
    batch: int = 10
    runs: int = 10
    warmup: int = 2
    groups: tuple[int, ...] = (2, 4, 8, 16)
    kernel: int = 3

    @property
    def cardinals(self) -> int:
        """d, the same for every configuration so that only k varies: the largest of 4, 2, 1 that
        divides the narrowest per-patch width (channels / largest k). 4 for the paper's 64 channels."""
        narrowest = self.channels // max(self.groups)
        d = 4
        while d > 1 and narrowest % d:
            d //= 2
        return d

    def problems(self) -> list[str]:
        out = []
        if min(self.channels, self.patch, self.batch, self.runs) < 1 or self.warmup < 0:
            out.append("layer channels, patch, batch and runs must be >= 1 (warm-up >= 0)")
        elif any(k < 2 or self.channels % k for k in self.groups):
            out.append(f"every k must be >= 2 and divide the layer's {self.channels} channels (k: {self.groups})")
        for name, value, top in (("channels", self.channels, MAX_LAYER_CHANNELS),
                                 ("patch", self.patch, CONFIG_BOUNDS["patch_size"][2]),
                                 ("batch", self.batch, MAX_BATCH)):
            if value > top:
                out.append(f"layer {name} {value} is over the largest the bench builds ({top})")
        return out

    def memory_needed(self) -> int:
        """Bytes of one timed call, roughly: the input, the output and the k mixed kernels per patch (f32)."""
        activations = 2 * self.batch * self.channels * self.patch * self.patch
        kernels = self.batch * max(self.groups) * self.channels * self.channels * self.kernel * self.kernel
        return 4 * (activations + kernels)


@dataclass(frozen=True)
class ModelProtocol:
    """Full-network latency: a ``height`` x ``width`` input restored whole (each tiling), median and p90
    of ``runs``; and the patch-batch latency, ``patch_batch`` patches of the model's patch size (48)."""

    height: int = 256
    width: int = 256
    runs: int = 5
    warmup: int = 1
    tilings: tuple[str, ...] = ("reference", "cells")
    patch_batch: int = 16
    patch_runs: int = 10
    patch_warmup: int = 2

    def problems(self) -> list[str]:
        if min(self.height, self.width, self.runs, self.patch_batch, self.patch_runs) < 1:
            return ["model image size, runs and patch batch must be >= 1"]
        if self.patch_batch > MAX_BATCH:
            return [f"model patch batch {self.patch_batch} is over {MAX_BATCH} patches per engine call"]
        return []


@dataclass(frozen=True)
class QualityProtocol:
    """PSNR / SSIM as the paper's Tables 4-6: SR on CSet5 and CSet14, denoising on BSD68, JPEG on BSD68
    and CSet14 (stand-ins for Classic5 and LIVE1; grey for a grey model)."""

    sr_sets: tuple[str, ...] = ("CSet5", "CSet14")
    grey_set: str = "BSD68"
    jpeg_extra_sets: tuple[str, ...] = ("CSet14",)  # all images each, as the SR sets
    sigmas: tuple[float, ...] = (15, 25, 50)
    qualities: tuple[int, ...] = (10, 20, 30, 40)
    max_images_sr: int | None = None  # per set; None: all
    max_images_grey: int | None = 8  # BSD68 is 68 large grey images at 3-4 levels each


@dataclass(frozen=True)
class ParityProtocol:
    """Engines against the PyTorch reference: random patches, the tiles of a real image, whole images."""

    patches: int = 16
    images: int = 4  # bundled sample photos
    openvino_precisions: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class RayProtocol:
    """Corpus throughput of ``restore --ray``: the first ``images`` of the task's test set (None: all),
    once per pool size in ``workers`` (one-thread actors), ``rounds`` alternating passes, medians."""

    workers: tuple[int, ...] = (1, 2)
    images: int | None = None
    rounds: int = 1
    tiling: str = "reference"


PRESETS = {
    "quick": dict(layer=LayerProtocol(batch=2, runs=3, warmup=1), sgemm_size=1024,
                  model=ModelProtocol(runs=2, warmup=1, patch_runs=3, patch_warmup=1),
                  quality=QualityProtocol(max_images_sr=1, max_images_grey=1),
                  parity=ParityProtocol(images=1, openvino_precisions=("fp32", "fp16")),
                  ray=RayProtocol(images=4)),
    "default": dict(layer=LayerProtocol(), model=ModelProtocol(), quality=QualityProtocol(), parity=ParityProtocol(),
                    ray=RayProtocol()),
    "paper": dict(layer=LayerProtocol(batch=100, runs=100, warmup=2),
                  model=ModelProtocol(runs=20, patch_runs=30),
                  quality=QualityProtocol(max_images_sr=None, max_images_grey=None),
                  parity=ParityProtocol(), ray=RayProtocol(rounds=3)),
}


def default_data_dir() -> Path | None:
    """``$NSR_DATA``, else ``../shared/data`` beside a source checkout; None when neither exists."""
    import os

    env = os.environ.get("NSR_DATA")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside if beside.is_dir() else None


@dataclass(frozen=True)
class BenchSettings:
    suites: tuple[str, ...] = DEFAULT_SUITES
    backends: tuple[str, ...] = BACKENDS
    threads: int = field(default_factory=usable_cores)
    mode: str = "default"
    device: str = "cpu"
    conv_forms: tuple[str, ...] = DEFAULT_CONV_FORMS
    layer: LayerProtocol = LayerProtocol()
    model: ModelProtocol = ModelProtocol()
    quality: QualityProtocol = QualityProtocol()
    parity: ParityProtocol = ParityProtocol()
    ray: RayProtocol = RayProtocol()
    data_dir: Path | None = field(default_factory=default_data_dir)
    opset: int = 17
    sgemm_size: int = 2048  # the sgemm rate's matrices (1024 in --quick)
    seed: int = 0
    progress: bool = True

    @classmethod
    def preset(cls, mode: str = "default", **overrides) -> BenchSettings:
        """The ``mode`` preset with ``overrides`` (any field) applied on top."""
        if mode not in MODES:
            raise NSRError(f"unknown preset {mode!r} (choose from {', '.join(MODES)})")
        return cls(mode=mode, **{**PRESETS[mode], **overrides})

    def replace(self, **kw) -> BenchSettings:
        return replace(self, **kw)

    def validate(self) -> BenchSettings:
        problems = []
        for name, values, allowed in (("suite", self.suites, SUITES), ("backend", self.backends, BACKENDS),
                                      ("conv form", self.conv_forms, CONV_FORMS), ("device", (self.device,), DEVICES)):
            unknown = [v for v in values if v not in allowed]
            if unknown:
                problems.append(f"unknown {name} {', '.join(map(repr, unknown))} (choose from {', '.join(allowed)})")
            if not values:
                problems.append(f"no {name} chosen")
        problems += self.layer.problems() + self.model.problems()
        if problems:
            raise NSRError("; ".join(problems))
        check_threads(self.threads, "--threads")
        check_pixels(self.model.width, self.model.height, "--image-size")
        check_memory(self.layer.memory_needed(), "--layer-shape",
                     f"the layer suite's {self.layer.batch} patches of {self.layer.channels} x {self.layer.patch}^2")
        return self

    def as_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["data_dir"] = str(self.data_dir) if self.data_dir else None
        d["layer"]["cardinals"] = self.layer.cardinals
        del d["progress"]
        return d
