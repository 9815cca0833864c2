"""Hyperparameters of an NSR / WDSR restoration network, and what follows from them.

Torch-free on purpose: the runtimes read the same description from ``nsr.json`` and must not
need torch. The network is the one of Fan et al., "Neural Sparse Representation for Image
Restoration" (NeurIPS 2020), as trained by the reference trainer ``ychfan/pt_ir``
(models ``wdsr_nsr`` and ``wdsr``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from nsr_deploy.core.budgets import check_config_values, check_tensor_elements
from nsr_deploy.core.errors import NSRError

KERNEL = 3  # every body conv is 3x3
SKIP_KERNEL = 5  # the skip conv is 5x5


# the reference tiling's stride is patch - 2 * 4 (reflect pad) - 8 (core/geometry.py): at least 1
MIN_SPARSE_PATCH = 17


class ConvShape(NamedTuple):
    """One conv of the network, in forward order. ``cout`` is per patch: a sparse conv stores ``k`` times as many
    output channels (one kernel per group) and mixes them into ``cout`` (Fan et al., NeurIPS 2020, Eq. 10)."""

    name: str  # the reference trainer's module path, e.g. ``body.1.body.0``
    cin: int
    cout: int
    kernel: int
    sparse: bool


@dataclass(frozen=True)
class NSRConfig:
    """One network. ``groups`` is the paper's k, ``cardinals`` its d (Eq. 10)."""

    channels: int = 3
    scale: int = 2
    num_blocks: int = 16
    units: int = 32
    block_width: int = 128  # int(units * width_multiplier): hidden channels inside a block
    sparse: bool = True
    groups: int = 4
    cardinals: int = 16
    image_mean: float = 0.5
    patch_size: int = 48

    def __post_init__(self):
        check_config_values(dataclasses.asdict(self))
        problems = []
        if self.channels < 1:
            problems.append(f"channels must be >= 1, got {self.channels}")
        if self.scale < 1:
            problems.append(f"scale must be >= 1, got {self.scale}")
        if self.num_blocks < 0 or self.units < 1 or self.block_width < 1:
            problems.append("blocks must be >= 0 and units, block width >= 1")
        if self.patch_size < 1:
            problems.append(f"patch size must be >= 1, got {self.patch_size}")
        if self.sparse and self.patch_size < MIN_SPARSE_PATCH:
            problems.append(f"patch size must be >= {MIN_SPARSE_PATCH} for a sparse model (its reference tiling "
                            f"steps by patch - 16), got {self.patch_size}")
        if self.sparse:
            if self.groups < 1 or self.cardinals < 1:
                problems.append("k (groups) and d (cardinals) must be >= 1")
            elif self.units % self.cardinals or self.block_width % self.cardinals:
                problems.append(
                    f"d={self.cardinals} must divide the output width of every sparse conv "
                    f"(units {self.units}, block width {self.block_width})"
                )
        elif self.groups != 1 or self.cardinals != 1:
            problems.append("a dense model has k = d = 1")
        if problems:
            raise NSRError("invalid model configuration: " + "; ".join(problems))
        check_tensor_elements(self.parameter_count(weight_norm=True), "model configuration")

    # -- construction helpers -------------------------------------------------------------
    @classmethod
    def create(cls, width_multiplier: float | None = None, **kw) -> NSRConfig:
        """Like the trainer's flags: ``block_width = int(units * width_multiplier)``."""
        if width_multiplier is not None:
            kw["block_width"] = int(kw.get("units", cls.units) * width_multiplier)
        if not kw.get("sparse", True):
            kw.setdefault("groups", 1)
            kw.setdefault("cardinals", 1)
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict) -> NSRConfig:
        check_config_values(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"width_multiplier", "task"}
        if unknown:
            raise NSRError(f"unknown model configuration keys: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> NSRConfig:
        return dataclasses.replace(self, **kw)

    def dense_twin(self) -> NSRConfig:
        """The dense network that computes what one patch of this one computes."""
        return self.replace(sparse=False, groups=1, cardinals=1)

    # -- derived facts --------------------------------------------------------------------
    @property
    def width_multiplier(self) -> float:
        return self.block_width / self.units

    @property
    def out_channels(self) -> int:
        """Channels of the body's output before pixel shuffle."""
        return self.scale * self.scale * self.channels

    @property
    def has_skip(self) -> bool:
        return self.out_channels != self.channels

    @property
    def task(self) -> str:
        if self.scale > 1:
            return f"super-resolution x{self.scale}"
        return "restoration (same size)"

    @property
    def kind(self) -> str:
        return "wdsr_nsr" if self.sparse else "wdsr"

    def conv_shapes(self) -> list[ConvShape]:
        """Every conv, in forward order."""
        shapes = [ConvShape("body.0", self.channels, self.units, KERNEL, False)]
        for i in range(1, self.num_blocks + 1):
            shapes.append(ConvShape(f"body.{i}.body.0", self.units, self.block_width, KERNEL, self.sparse))
            shapes.append(ConvShape(f"body.{i}.body.2", self.block_width, self.units, KERNEL, self.sparse))
        shapes.append(ConvShape(f"body.{self.num_blocks + 1}", self.units, self.out_channels, KERNEL, False))
        if self.has_skip:
            shapes.append(ConvShape("skip.0", self.channels, self.out_channels, SKIP_KERNEL, False))
        return shapes

    def parameter_count(self, weight_norm: bool = False) -> int:
        """Stored parameters. ``weight_norm=True`` counts as the reference trainer does (g and v)."""
        total = 0
        for conv in self.conv_shapes():
            out = (self.groups if conv.sparse else 1) * conv.cout
            total += out * conv.cin * conv.kernel ** 2 + out  # weight + bias
            if weight_norm:
                total += out  # weight_g
            if conv.sparse:
                total += (conv.cin + 1) * self.groups * self.cardinals  # the MLP (Linear)
        return total

    def flops_per_pixel(self, dense_equivalent: bool = False) -> float:
        """FLOPs (2 per multiply-add) per input pixel.

        Effective: what a patch really computes: one mixed kernel per sparse conv, plus the
        per-patch pooling, MLP, softmax and kernel mixing spread over the patch's pixels.
        Dense-equivalent: every sparse conv evaluated for all k groups.
        """
        area = float(self.patch_size * self.patch_size)
        total = 0.0
        for _, cin, cout, ks, sparse in self.conv_shapes():
            per_pixel = 2.0 * ks * ks * cin * cout
            if sparse and dense_equivalent:
                per_pixel *= self.groups
            elif sparse:
                kd = self.groups * self.cardinals
                per_patch = cin * area  # pooling
                per_patch += 2.0 * cin * kd + 3.0 * kd  # MLP + softmax
                per_patch += 2.0 * self.groups * cout * (cin * ks * ks + 1)  # mixing
                per_pixel += per_patch / area
            total += per_pixel
        return total

    def receptive_radius(self) -> int:
        """Pixels of context a body output pixel depends on, on each side."""
        return (2 * self.num_blocks + 2) * (KERNEL // 2)

    def summary(self) -> dict:
        return {
            "model": self.kind,
            "task": self.task,
            "channels": self.channels,
            "scale": self.scale,
            "blocks": self.num_blocks,
            "units": self.units,
            "width_multiplier": round(self.width_multiplier, 4),
            "block_width": self.block_width,
            "k": self.groups,
            "d": self.cardinals,
            "image_mean": self.image_mean,
            "patch_size": self.patch_size,
            "parameters": self.parameter_count(),
            "parameters_reference": self.parameter_count(weight_norm=True),
            "mflops_per_pixel": self.flops_per_pixel() / 1e6,
            "mflops_per_pixel_dense_equivalent": self.flops_per_pixel(dense_equivalent=True) / 1e6,
            "dense_twin_mflops_per_pixel": self.dense_twin().flops_per_pixel() / 1e6,
        }
