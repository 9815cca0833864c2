"""One export run: the gated ONNX model first (every other target is lowered from it), then each
requested target into the same folder, then the manifest. All of it lands atomically or not at all.

A target module (``nsr_deploy.exporters.<name>``) provides::

    NAME = "openvino"
    def unavailable() -> str | None           # why it cannot be built here, or None
    def build(ctx: ExportContext) -> None      # writes files into ctx.folder, fills ctx.manifest
"""

from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nsr_deploy.capabilities import ALL_TARGETS, PACKAGING_TARGETS, PORTABLE_FORM
from nsr_deploy.errors import BackendUnavailable, NSRError
from nsr_deploy.exporters.common import Stages, atomic_output
from nsr_deploy.runtimes.manifest import MANIFEST, write_json

TARGET_MODULES = {name: f"nsr_deploy.exporters.{name}" for name in ALL_TARGETS}


@dataclass
class ExportOptions:
    conv_form: str = "grouped"
    patch_batch: int | None = 16
    opset: int = 17
    precision: str = "fp32"  # fp32 | fp16 | int8 (targets say which they support)
    calib: str | None = None  # folder of calibration images (int8)
    gate_images: str | None = None  # folder of clean images for the int8 task gate (default: bundled samples)
    threads: int | None = None
    # TensorRT optimisation profile over the patch batch (dynamic forms): min / opt / max
    batch_profile: tuple[int, int, int] | None = None
    workspace_mib: int = 1024
    timing_cache: str | None = None
    force: bool = False
    show_progress: bool = True


@dataclass
class ExportContext:
    loaded: object  # LoadedModel
    folder: Path  # the temp folder that becomes OUT
    options: ExportOptions
    stages: Stages
    scratch: Path  # working files that are not shipped (candidate models, portable copies)
    targets: list[str] = field(default_factory=list)  # every target this run builds
    manifest: dict = field(default_factory=dict)
    _portable: dict = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        """The parity-checked ONNX model to lower into other runtimes: ``model.onnx`` when it is
        portable, else (an ORT-only ``nchwc`` model.onnx) a portable twin built on first use."""
        info = self.manifest["targets"]["onnx"]
        if info.get("portable", True):
            return self.folder / info["file"]
        return self.onnx_for(PORTABLE_FORM)

    def onnx_for(self, form: str) -> Path:
        """The ONNX model in conv form ``form`` (``model.onnx`` if it is that form; else built once)."""
        info = self.manifest["targets"]["onnx"]
        if info.get("conv_form") == form:
            return self.folder / info["file"]
        if form not in self._portable:
            from nsr_deploy.exporters.onnx import build_portable

            self._portable[form] = build_portable(self.loaded, self.scratch, self.options.patch_batch,
                                                  self.options.opset, form)
        return self._portable[form]


def target_module(name: str):
    if name not in TARGET_MODULES:
        raise NSRError(f"unknown target {name!r}")
    try:
        return importlib.import_module(TARGET_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("nsr_deploy"):
            raise BackendUnavailable(f"target {name!r} is not part of this nsr-deploy build") from None
        raise


def resolve_targets(target: str) -> tuple[list[str], dict[str, str]]:
    """Targets to build, and the ones skipped (with why) for ``all`` or a packaging target."""
    if target == "all":
        names = [n for n in TARGET_MODULES if n not in PACKAGING_TARGETS]
        optional = set(names)
    else:
        optional = set(PACKAGING_TARGETS.get(target, ()))
        names = [*PACKAGING_TARGETS.get(target, ()), target]  # packaging runs last, on what was built
    chosen, skipped = [], {}
    for name in names:
        try:
            why = target_module(name).unavailable()
        except BackendUnavailable as e:
            why = str(e)
        if why is None:
            chosen.append(name)
        elif name in optional:
            skipped[name] = why
        else:
            raise BackendUnavailable(f"cannot build target {name!r} here: {why}")
    if "onnx" not in chosen:
        chosen.insert(0, "onnx")
    return chosen, skipped


def export(loaded, out: str | Path, target: str = "onnx", options: ExportOptions | None = None) -> dict:
    """Build ``target`` (or ``all``) into ``out``; returns the manifest written as ``nsr.json``."""
    options = options or ExportOptions()
    targets, skipped = resolve_targets(target)
    modules = [target_module(t) for t in targets]
    for module in modules:  # refuse options a target cannot honour before any work is done
        getattr(module, "validate_options", lambda _: None)(options)
    stage_names = [s for m in modules for s in getattr(m, "STAGES", [m.NAME])]
    with atomic_output(out, options.force) as tmp, tempfile.TemporaryDirectory(prefix="nsr-export-") as scratch:
        stages = Stages(stage_names, options.show_progress)
        ctx = ExportContext(loaded, tmp, options, stages, Path(scratch), targets)
        try:
            for module in modules:
                module.build(ctx)
        finally:
            stages.close()
        if skipped:
            ctx.manifest["skipped_targets"] = skipped
        from nsr_deploy.exporters.runs_on import runs_on

        ctx.manifest["runs_on"] = runs_on(ctx.manifest)
        ctx.manifest["export_seconds"] = stages.timings
        write_json(tmp / MANIFEST, ctx.manifest)
    return ctx.manifest
