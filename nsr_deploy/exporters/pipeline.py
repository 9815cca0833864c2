"""One export run: the gated ONNX model first (every other target is lowered from it), then each
requested target into the same folder, then the manifest. All of it lands atomically or not at all.

Each target is built, then gated (:mod:`.target` is the protocol); the pipeline puts the sections
they return together and writes the manifest once. :func:`build_ungated` builds engines the same way
without their gates, for the bench to measure.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.capabilities import ALL_TARGETS, PACKAGING_TARGETS, PORTABLE_FORM
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.exporters.common import Stages, atomic_output
from nsr_deploy.exporters.output_folder import scratch_folder
from nsr_deploy.exporters.target import Artifact
from nsr_deploy.runtimes.manifest import MANIFEST, write_json

TARGET_MODULES = {name: f"nsr_deploy.exporters.{name}.target" for name in ALL_TARGETS}


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
    allow_fallback: bool = False  # ExecuTorch: ship a .pte whose sparse layers XNNPACK does not take whole
    max_side: int | None = None  # ExecuTorch: largest window side the .pte takes (None: its default)
    force: bool = False
    show_progress: bool = True
    conformance: bool = False  # write conformance vectors (docs/contract.md) into the folder


@dataclass
class ExportContext:
    loaded: object  # LoadedModel
    folder: Path  # the temp folder that becomes OUT
    options: ExportOptions
    stages: Stages
    scratch: Path  # working files that are not shipped (candidate models, portable copies)
    targets: list[str] = field(default_factory=list)  # every target this run builds
    manifest: dict = field(default_factory=dict)  # what the targets recorded so far (read-only to them)
    artifacts: dict = field(default_factory=dict)  # target -> Artifact, as recorded
    _portable: dict = field(default_factory=dict)

    def record(self, artifact: Artifact, gate: GateResult | None = None) -> None:
        """Merge a built (and gated) target's sections into the manifest."""
        self.artifacts[artifact.target] = artifact
        m = self.manifest
        m.update(artifact.sections)
        targets = m.setdefault("targets", {})
        if artifact.entry is not None:
            targets[artifact.target] = {**artifact.entry, **(gate.facts if gate else {})}
        for target, file in artifact.moved.items():
            targets[target]["file"] = file
        m.setdefault("tools", {}).update(artifact.tools)
        if gate is not None:
            m.setdefault("parity", {})[artifact.parity_key] = gate.to_manifest()

    def _file(self, info: dict) -> Path:
        onnx = self.artifacts.get("onnx")  # may lie in another folder (the bench builds each engine apart)
        return onnx.path if onnx is not None else self.folder / info["file"]

    @property
    def onnx_path(self) -> Path:
        """The parity-checked ONNX model to lower into other runtimes: ``model.onnx`` when it is
        portable, else (an ORT-only ``nchwc`` model.onnx) a portable twin built on first use."""
        info = self.manifest["targets"]["onnx"]
        if info.get("portable", True):
            return self._file(info)
        return self.onnx_for(PORTABLE_FORM)

    def onnx_for(self, form: str) -> Path:
        """The ONNX model in conv form ``form`` (``model.onnx`` if it is that form; else built once)."""
        info = self.manifest["targets"]["onnx"]
        if info.get("conv_form") == form:
            return self._file(info)
        if form not in self._portable:
            from nsr_deploy.exporters.onnx.graph import build_portable

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


def run_target(module, ctx: ExportContext) -> Artifact:
    """Build one target, gate it (a failed gate stops the export: nothing is written) and record it."""
    artifact = module.build(ctx)
    gate = module.gate(artifact, ctx)
    if gate is not None and not gate.passed:
        raise NSRError(gate.failure_line(artifact.engine))
    ctx.record(artifact, gate)
    return artifact


def build_ungated(loaded, folder: Path, target: str, options: ExportOptions,
                  built: tuple[Artifact, ...] = ()) -> Artifact:
    """``target`` built into ``folder`` by its own build step, without its gate: for measuring (a gate
    that fails would stop an export; the bench reports the failure as a row). ``built``: artifacts it
    lowers from (the ONNX model), built the same way with the same options."""
    folder.mkdir(parents=True, exist_ok=True)
    ctx = ExportContext(loaded, folder, options, Stages([], show=False), folder, [target])
    for artifact in built:
        ctx.record(artifact)
    return target_module(target).build(ctx)


def wants_fp16_onnx(target: str, targets: list[str], options: ExportOptions) -> bool:
    """fp16 exports ship ``model.fp16.onnx`` (gated, :mod:`.onnx.fp16`) when ONNX is asked for or TensorRT
    builds its fp16 engine from it; an OpenVINO fp16 IR is compressed from the fp32 model and needs none."""
    return options.precision == "fp16" and (target in ("onnx", "all") or "tensorrt" in targets)


def export(loaded, out: str | Path, target: str = "onnx", options: ExportOptions | None = None) -> dict:
    """Build ``target`` (or ``all``) into ``out``; returns the manifest written as ``nsr.json``."""
    options = options or ExportOptions()
    targets, skipped = resolve_targets(target)
    modules = [target_module(t) for t in targets]
    if wants_fp16_onnx(target, targets, options):
        modules.insert(targets.index("onnx") + 1, importlib.import_module("nsr_deploy.exporters.onnx.fp16"))
    for module in modules:  # refuse options a target cannot honour before any work is done
        getattr(module, "validate_options", lambda _: None)(options)
    stage_names = [s for m in modules for s in getattr(m, "STAGES", [m.NAME])]
    stage_names += ["conformance"] if options.conformance else []
    with atomic_output(out, options.force) as tmp, scratch_folder(out) as scratch:
        stages = Stages(stage_names, options.show_progress)
        ctx = ExportContext(loaded, tmp, options, stages, Path(scratch), targets)
        try:
            for module in modules:
                run_target(module, ctx)
            if options.conformance:
                from nsr_deploy.exporters.conformance import write_vectors

                with stages.stage("conformance"):
                    ctx.manifest["conformance"] = write_vectors(tmp, ctx.manifest["targets"]["onnx"]["file"],
                                                                loaded.config, options.threads)
        finally:
            stages.close()
        if skipped:
            ctx.manifest["skipped_targets"] = skipped
        from nsr_deploy.exporters.runs_on import runs_on

        # entries that are not a target of their own (onnx-fp16: the ONNX target's second file) say nothing
        ctx.manifest["runs_on"] = runs_on(ctx.manifest, lambda name: target_module(name) if name in TARGET_MODULES
                                          else None)
        ctx.manifest["export_seconds"] = stages.timings
        write_json(tmp / MANIFEST, ctx.manifest)
    return ctx.manifest


def export_onnx(loaded, out: str | Path, conv_form: str = "grouped", patch_batch: int | None = 16, opset: int = 17,
                force: bool = False, threads: int | None = None, show_progress: bool = True) -> dict:
    """Export, gate and write ``OUT/model.onnx`` + ``OUT/nsr.json``; returns the manifest."""
    from nsr_deploy.exporters.onnx.target import check_options

    check_options(conv_form, patch_batch, opset)
    opts = ExportOptions(conv_form=conv_form, patch_batch=patch_batch, opset=opset, force=force, threads=threads,
                         show_progress=show_progress)
    return export(loaded, out, "onnx", opts)
