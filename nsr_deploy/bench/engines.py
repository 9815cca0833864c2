"""The engines a bench run times and checks, built once each into a scratch folder.

The bench builds its engines with the exporters' own building blocks (``build_onnx`` for ONNX
Runtime, ``openvino.convert`` / ``save`` for OpenVINO fp32 / fp16) but *without* their parity gates:
a gate that fails would stop an export, while the bench must report the failure as a row. int8 is
the exception: its calibration lives in the export pipeline, so it goes through ``export`` (gate
included); a failed gate is reported as the row's failure.

The dense twin (same shapes, ``k = d = 1``) has random weights: it exists to be timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from nsr_deploy.capabilities import AT_LOAD_FORM, TIMING_TWIN_FORM
from nsr_deploy.errors import NSRError

TWIN_FORM = TIMING_TWIN_FORM
AT_LOAD_SOURCE = "grouped"  # the file nchwc-at-load specialises
TWIN_SEED = 1234


@dataclass(frozen=True)
class EngineSpec:
    """One engine: a backend, a conv form (None: PyTorch eager on the reference network), a precision,
    and whether it runs the dense twin instead of the model."""

    backend: str
    form: str | None = None
    precision: str = "fp32"
    twin: bool = False

    @property
    def label(self) -> str:
        parts = (["dense twin"] if self.twin else []) + [self.backend]
        if self.form and not self.twin:
            parts.append(self.form)
        if self.precision != "fp32":
            parts.append(self.precision)
        return " ".join(parts)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "form": None if self.twin else self.form, "precision": self.precision,
                "dense_twin": self.twin}


def dense_twin_of(loaded):
    """A LoadedModel of the dense twin with seeded random weights (for timing only)."""
    import torch

    from nsr_deploy.models.checkpoint import LoadedModel
    from nsr_deploy.models.network import NSRNet

    torch.manual_seed(TWIN_SEED)
    net = NSRNet(loaded.config.dense_twin()).eval()
    return LoadedModel(net, f"{loaded.name}-dense-twin", "built", "0" * 64, f"{loaded.name}-dense-twin")


class EngineFactory:
    """Runners for :class:`EngineSpec` s of one model; engine files are built on first use and reused."""

    def __init__(self, loaded, threads: int, scratch: Path, patch_batch: int = 16, opset: int = 17):
        self.loaded = loaded
        self.threads = threads
        self.scratch = Path(scratch)
        self.patch_batch = patch_batch
        self.opset = opset
        self.build_seconds: dict[str, float] = {}
        self._twin = None
        self._files: dict[tuple, Path] = {}

    @property
    def twin(self):
        if self._twin is None:
            self._twin = dense_twin_of(self.loaded)
        return self._twin

    def model_of(self, spec: EngineSpec):
        return self.twin if spec.twin else self.loaded

    # -- building ---------------------------------------------------------------------------
    def _built(self, key: tuple, build) -> Path:
        if key not in self._files:
            t0 = time.perf_counter()
            self._files[key] = build()
            self.build_seconds["/".join(str(k) for k in key)] = round(time.perf_counter() - t0, 3)
        return self._files[key]

    def _batch_for(self, form: str) -> int | None:
        from nsr_deploy.exporters.onnx import STATIC_FORMS

        return self.patch_batch if form in STATIC_FORMS else None

    def onnx_path(self, form: str, twin: bool = False) -> Path:
        form = TWIN_FORM if twin else AT_LOAD_SOURCE if form == AT_LOAD_FORM else form

        def build() -> Path:
            from nsr_deploy.exporters.onnx import build_onnx

            model = build_onnx(self.twin if twin else self.loaded, form, self._batch_for(form), self.opset)
            path = self.scratch / f"{'twin' if twin else 'model'}-{form}.onnx"
            path.write_bytes(model.SerializeToString())
            return path

        return self._built(("onnx", form, twin), build)

    def ir_path(self, form: str, precision: str, twin: bool = False) -> Path:
        form = TWIN_FORM if twin else form
        if precision == "int8":
            return self._built(("openvino", form, precision, twin), lambda: self._int8_ir(form, twin))

        def build() -> Path:
            from nsr_deploy.exporters.common import base_manifest
            from nsr_deploy.exporters.onnx import dynamic_axes
            from nsr_deploy.exporters.openvino import convert, save

            loaded = self.twin if twin else self.loaded
            model = convert(self.onnx_path(form, twin))
            contract = base_manifest(loaded, form, self._batch_for(form), dynamic_axes(form))
            path = self.scratch / f"{'twin' if twin else 'model'}-{form}-{precision}.xml"
            save(model, path, precision, contract)
            return path

        return self._built(("openvino", form, precision, twin), build)

    def _int8_ir(self, form: str, twin: bool) -> Path:
        """int8 through the export pipeline (NNCF calibration on the bundled samples, gate included)."""
        from nsr_deploy.exporters.pipeline import ExportOptions, export

        folder = self.scratch / f"{'twin' if twin else 'model'}-{form}-int8"
        opts = ExportOptions(conv_form=form, patch_batch=self.patch_batch, opset=self.opset, precision="int8",
                             threads=self.threads, show_progress=False)
        export(self.twin if twin else self.loaded, folder, "openvino", opts)
        return folder / "model.xml"

    # -- running ----------------------------------------------------------------------------
    def runner(self, spec: EngineSpec):
        """A fresh (inactive) runner for ``spec``. Raises NSRError when the engine cannot be built."""
        if spec.backend == "torch":
            from nsr_deploy.runtimes.torch_runner import TorchRunner

            model = self.model_of(spec)
            return TorchRunner(model.source, self.threads, net=model.net)
        if spec.backend == "onnxruntime":
            from nsr_deploy.runtimes.ort_runner import OrtRunner

            if spec.precision != "fp32":
                raise NSRError(f"ONNX Runtime engines are fp32 here, not {spec.precision}")
            # every other form is timed as built; only nchwc-at-load gets the runner's specialisation
            return OrtRunner(str(self.onnx_path(spec.form, spec.twin)), self.threads,
                             specialise=spec.form == AT_LOAD_FORM and not spec.twin)
        if spec.backend == "openvino":
            from nsr_deploy.runtimes.ov_runner import OvRunner

            return OvRunner(str(self.ir_path(spec.form, spec.precision, spec.twin)), self.threads, cache=False)
        raise NSRError(f"the bench cannot build {spec.backend} engines")


def form_unavailable(form: str, config) -> str | None:
    """Why ``form`` cannot be built for ``config`` on this machine (``nchwc`` needs ONNX Runtime's NCHWc
    kernels and channel counts that fit their block), or None."""
    if form != "nchwc":
        return None
    from nsr_deploy.exporters.nchwc import mlas_block_size, unsupported_reason

    return unsupported_reason(config, mlas_block_size())


def engine_specs(backends, conv_forms: tuple[str, ...], config) -> tuple[list[EngineSpec], dict[str, str]]:
    """The fp32 engines of the model (``config``) a run measures: PyTorch eager, then every conv form
    of every exported backend in use; and the (backend, form) pairs left out, with why."""
    specs, skipped = [], {}
    for backend in backends.used:
        if backend == "torch":
            specs.append(EngineSpec("torch"))
            continue
        forms, not_here = backends.forms(backend, conv_forms)
        skipped.update({f"{backend} {form}": why for form, why in not_here.items()})
        for form in forms:
            why = form_unavailable(form, config)
            if why:
                skipped[f"{backend} {form}"] = why
            else:
                specs.append(EngineSpec(backend, form))
    return specs, skipped
