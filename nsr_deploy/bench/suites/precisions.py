"""The model suite's reduced-precision rows and its competitor row.

* every precision in ``BENCH_PRECISIONS`` beyond fp32 (fp32 rows are the conv-form rows): the sparse
  model as ``--target openvino --conv-form auto`` exports it, and the dense twin, both at that precision,
  so each sparse row reads against the twin *at the same precision*. bf16 is left out, with why, on a CPU
  without native bf16; int8 goes through the int8 export (its task gate included).
* ``torch.compile`` (inductor, CPU) of the same sparse reference network on the same patches: what a
  PyTorch user would deploy instead. Inductor needs a C++ compiler; when compiling fails, the row says why.
"""

from __future__ import annotations

from nsr_deploy.bench.engines import EngineSpec
from nsr_deploy.bench.torch_compile import COMPILE_FORM
from nsr_deploy.core.capabilities import AUTO_FORM, BENCH_PRECISIONS, TIMING_TWIN_FORM
from nsr_deploy.core.errors import NSRError

PRECISION_BACKEND = "openvino"  # the backend with reduced-precision engines on CPUs


def openvino_auto_form(config) -> str:
    """The form ``--target openvino --conv-form auto`` gives this model's IR."""
    from nsr_deploy.exporters.form_rule import auto_form, openvino_form

    return openvino_form(config, AUTO_FORM)[0] or auto_form(config)[0]


def precision_specs(backends_used: tuple[str, ...], config) -> tuple[list[EngineSpec], dict[str, str]]:
    """Sparse and dense-twin specs at each reduced precision, and the precisions skipped here, with why."""
    if PRECISION_BACKEND not in backends_used:
        return [], {}
    specs, skipped = [], {}
    form = openvino_auto_form(config)
    for precision in BENCH_PRECISIONS:
        if precision == "fp32":
            continue
        why = precision_unavailable(precision)
        if why:
            skipped[f"{PRECISION_BACKEND} {precision}"] = why
            continue
        specs += [EngineSpec(PRECISION_BACKEND, form, precision),
                  EngineSpec(PRECISION_BACKEND, TIMING_TWIN_FORM, precision, twin=True)]
    return specs, skipped


def precision_unavailable(precision: str) -> str | None:
    if precision == "bf16":
        from nsr_deploy.runtimes.openvino.cpu_bf16 import bf16_unavailable

        why = bf16_unavailable()
        return f"bf16 needs a CPU with AVX-512 BF16 or AMX: {why}" if why else None
    if precision == "int8":
        from nsr_deploy.exporters.openvino.target import validate_options
        from nsr_deploy.exporters.pipeline import ExportOptions

        try:
            validate_options(ExportOptions(precision="int8"))
        except NSRError as e:
            return str(e)
    return None


def compile_spec(backends_used: tuple[str, ...]) -> list[EngineSpec]:
    return [EngineSpec("torch", COMPILE_FORM)] if "torch" in backends_used else []
