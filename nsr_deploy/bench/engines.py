"""The engines a bench run times and checks, built once each into a scratch folder.

The bench builds its engines through the export targets' own build step
(:func:`~nsr_deploy.exporters.pipeline.build_ungated`) but *without* their parity gates: a gate that
fails would stop an export, while the bench must report the failure as a row. int8 is the exception:
its build searches with its task gate, so it goes through ``export`` (gate included); a failed gate is
reported as the row's failure.

The dense twin (same shapes, ``k = d = 1``) has random weights: it exists to be timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from nsr_deploy.core.capabilities import (
    AT_LOAD_FORM,
    BACKEND_OF_TARGET,
    ONNX_FORMS,
    OPENVINO_ONLY_FORMS,
    REFERENCE_BACKEND,
    TARGET_OF_BACKEND,
    TIMING_TWIN_FORM,
    forms_of,
)
from nsr_deploy.core.errors import NSRError

TWIN_FORM = TIMING_TWIN_FORM
AT_LOAD_SOURCE = "grouped"  # the shipped file that nchwc-at-load specialises
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
        self._files: dict[tuple, object] = {}  # engine files and ONNX artifacts, built once

    @property
    def twin(self):
        if self._twin is None:
            self._twin = dense_twin_of(self.loaded)
        return self._twin

    def model_of(self, spec: EngineSpec):
        return self.twin if spec.twin else self.loaded

    # -- building ---------------------------------------------------------------------------
    def _built(self, key: tuple, build):
        if key not in self._files:
            t0 = time.perf_counter()
            self._files[key] = build()
            self.build_seconds["/".join(str(k) for k in key)] = round(time.perf_counter() - t0, 3)
        return self._files[key]

    def _options(self, form: str, precision: str = "fp32"):
        from nsr_deploy.exporters.pipeline import ExportOptions

        return ExportOptions(conv_form=form, patch_batch=self.patch_batch, opset=self.opset, precision=precision,
                             threads=self.threads, show_progress=False)

    def _onnx(self, form: str, twin: bool):
        """The ONNX target's artifact for ``form`` (built once, ungated)."""
        form = TWIN_FORM if twin else form

        def build():
            from nsr_deploy.exporters.pipeline import build_ungated

            folder = self.scratch / f"{'twin' if twin else 'model'}-{form}"
            return build_ungated(self.twin if twin else self.loaded, folder, "onnx", self._options(form))

        return self._built(("onnx", form, twin), build)

    def onnx_path(self, form: str, twin: bool = False) -> Path:
        if form == AT_LOAD_FORM:
            form = AT_LOAD_SOURCE
        if form == "nchwc" and not twin:  # no export form any more: built from torch for comparison
            return self._built(("onnx", form, twin), self._nchwc)
        return self._onnx(form, twin).path

    def _nchwc(self) -> Path:
        from nsr_deploy.exporters.onnx.graph import build_onnx

        path = self.scratch / "model-nchwc.onnx"
        path.write_bytes(build_onnx(self.loaded, "nchwc", self.patch_batch, self.opset).SerializeToString())
        return path

    def ir_path(self, form: str, precision: str, twin: bool = False) -> Path:
        form = TWIN_FORM if twin else form
        if precision == "int8":
            return self._built(("openvino", form, precision, twin), lambda: self._int8_ir(form, twin))

        def build() -> Path:
            from nsr_deploy.exporters.pipeline import build_ungated

            folder = self.scratch / f"{'twin' if twin else 'model'}-{form}-{precision}"
            lowered_from = () if form in OPENVINO_ONLY_FORMS else (self._onnx(form, twin),)  # folded: no ONNX
            return build_ungated(self.twin if twin else self.loaded, folder, "openvino",
                                 self._options(form, precision), lowered_from).path

        return self._built(("openvino", form, precision, twin), build)

    def _int8_ir(self, form: str, twin: bool) -> Path:
        """int8 through the export pipeline (NNCF calibration on the bundled samples, gate included)."""
        from nsr_deploy.exporters.pipeline import export

        folder = self.scratch / f"{'twin' if twin else 'model'}-{form}-int8"
        export(self.twin if twin else self.loaded, folder, "openvino", self._options(form, "int8"))
        return folder / "model.xml"

    # -- running ----------------------------------------------------------------------------
    def runner(self, spec: EngineSpec):
        """A fresh (inactive) runner for ``spec``. Raises NSRError when the engine cannot be built."""
        from nsr_deploy.runtimes import runner_class

        cls = runner_class(spec.backend)
        if spec.backend == REFERENCE_BACKEND:
            model = self.model_of(spec)
            if spec.form:  # torch.compile of the reference network, for this batch of patches
                from nsr_deploy.bench.torch_compile import compiled_runner

                return compiled_runner(model, self.threads, model.config.patch_size, self.patch_batch)
            return cls(model.source, self.threads, net=model.net)
        target = TARGET_OF_BACKEND.get(spec.backend)
        if target == "onnx" and spec.precision != "fp32":
            raise NSRError(f"ONNX Runtime engines are fp32 here, not {spec.precision}")
        if target == "onnx":  # every form timed as built; only nchwc-at-load gets the runner's specialisation
            return cls(str(self.onnx_path(spec.form, spec.twin)), self.threads,
                       specialise=spec.form == AT_LOAD_FORM and not spec.twin)
        if target == "openvino":
            return cls(str(self.ir_path(spec.form, spec.precision, spec.twin)), self.threads, cache=False)
        if target is None:
            raise NSRError(f"the bench cannot build {spec.backend} engines")
        return cls(str(self.engine_path(target, spec.form, spec.precision, spec.twin)), self.threads)

    def engine_path(self, target: str, form: str, precision: str, twin: bool = False) -> Path:
        """Any other target's engine file, built by its own build step (ungated) beside the ONNX model (when
        the form is an ONNX one: ExecuTorch's lowers from torch). The dense twin gets the twin form if the
        backend runs it, else the backend's own first form."""
        if twin:
            forms = forms_of(BACKEND_OF_TARGET[target])
            form = TWIN_FORM if TWIN_FORM in forms or not forms else forms[0]

        def build() -> Path:
            from nsr_deploy.exporters.pipeline import build_ungated

            folder = self.scratch / f"{'twin' if twin else 'model'}-{target}-{form}-{precision}"
            onnx = (self._onnx(form, twin),) if form in ONNX_FORMS else ()
            return build_ungated(self.twin if twin else self.loaded, folder, target,
                                 self._options(form, precision), onnx).path

        return self._built((target, form, precision, twin), build)


def form_unavailable(form: str, config) -> str | None:
    """Why ``form`` cannot be built for ``config`` on this machine (``nchwc`` needs ONNX Runtime's NCHWc
    kernels and channel counts that fit their block), or None."""
    if form != "nchwc":
        return None
    from nsr_deploy.exporters.onnx.nchwc import mlas_block_size, unsupported_reason

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
