"""What every exporter shares: atomic output folders, stage progress, tool versions, the manifest."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from contextlib import contextmanager
from importlib import metadata

from nsr_deploy import __version__
from nsr_deploy.exporters.output_folder import atomic_output  # noqa: F401 - where exporters found it
from nsr_deploy.runtimes.host_contract import CONTRACT_VERSION, host_rules, tiling_parameters
from nsr_deploy.runtimes.manifest import MANIFEST_FORMAT


def tool_versions(*packages: str) -> dict:
    out = {"nsr-deploy": __version__}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Stages:
    """Named export stages: a progress bar on the terminal, timings for the manifest."""

    def __init__(self, names: list[str], show: bool = True):
        self.names = names
        self.timings: dict[str, float] = {}
        self._bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=len(names), desc="export", unit="stage", leave=False,
                             bar_format="{desc}: {n_fmt}/{total_fmt} {postfix}")

    @contextmanager
    def stage(self, name: str):
        if self._bar is not None:
            self._bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        if self._bar is not None:
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def base_manifest(loaded, conv_form: str, patch_batch: int | None, dynamic: dict) -> dict:
    """The I/O contract shared by every target; targets add files, versions and parity."""
    cfg = loaded.config
    batch = patch_batch if patch_batch else "batch"
    s = cfg.scale
    return {
        "format": MANIFEST_FORMAT,
        "contract_version": CONTRACT_VERSION,
        "model": {
            "name": loaded.name,
            "kind": cfg.kind,
            "task": cfg.task,
            "config": cfg.to_dict(),
            "parameters": cfg.parameter_count(),
            "mflops_per_pixel": round(cfg.flops_per_pixel() / 1e6, 4),
        },
        "source": {"path": os.path.basename(loaded.source), "format": loaded.source_format,
                   "sha256": loaded.sha256},
        "io": {
            "layout": "NCHW",
            "inputs": [
                {"name": "x", "dtype": "float32", "shape": [batch, cfg.channels, "height", "width"],
                 "range": [0.0, 1.0], "meaning": "image patches; each batch item is one pooling patch"},
                {"name": "valid", "dtype": "float32", "shape": [batch, 1, "height", "width"],
                 "range": [0.0, 1.0],
                 "meaning": "1 on image pixels, 0 on padding beyond the image border: the skip conv "
                            "sees zeros there, as on the reference's whole image; all ones for a whole image"},
            ],
            "outputs": [
                {"name": "y", "dtype": "float32", "shape": [batch, cfg.channels, "out_height", "out_width"],
                 "out_height": f"height*{s}", "out_width": f"width*{s}",
                 "range": [0.0, 1.0], "meaning": "restored patches (clip to [0, 1] before quantising)"},
            ],
            "dynamic_axes": dynamic,
            "static_batch": patch_batch,
        },
        "semantics": {
            "image_mean": cfg.image_mean,
            "scale": s,
            "channels": cfg.channels,
            "patch_size": cfg.patch_size,
            "pooling": "mean over each batch item's full height x width (one patch = one pooling region)"
                       if cfg.sparse else "none (dense model)",
            "tiling": tiling_parameters(cfg),
            "host": host_rules(cfg),
        },
        "conv_form": conv_form,
    }
