"""``--conv-form auto``: the conv form of ``model.onnx``, decided by a rule from the model and the target
runtimes, never by timing it on the exporting machine (a stopwatch made the same export pick different
forms on different runs, and tuned the shipped file to a machine it will not run on).

The rule (forms: :mod:`nsr_deploy.models.deploy`):

- a dense model has no per-patch conv, so every form is the same graph: ``matmul``, whose patch batch
  stays dynamic (no fixed batch to pad).
- a sparse model: ``grouped``, one grouped Conv per sparse layer. It is standard ONNX that every
  runtime here runs (ONNX Runtime on any CPU, Node and the web; OpenVINO; TensorRT is decided by its
  own exporter from documented operator support); it is the fastest portable form in ONNX Runtime and
  OpenVINO (``matmul`` pays an im2col, ``dense-mix`` k times the FLOPs), and it is the form the ONNX
  Runtime runner reads back to build its blocked NCHWc engine at load time. Its patch batch is fixed
  (``Conv.group`` is an attribute); runners keep short calls from computing the padding.

OpenVINO has a rule of its own (:func:`openvino_form`): a sparse model's IR is built ``folded`` from
OpenVINO's opsets (:mod:`.openvino.folded`), not lowered from ``model.onnx``: the ``grouped`` graph's
batch <-> channel Reshapes around every per-patch conv cost the CPU plugin layout Reorders and leave the
bias, ReLU and residual unfused (per-op profile in README). A dense model has no per-patch conv: its IR is
lowered from ``model.onnx``.

Timing the candidates is still there, as the explicit opt-in ``--conv-form tune`` (machine-specific).
The rule's data lives in :mod:`nsr_deploy.core.capabilities`.
"""

from __future__ import annotations

from nsr_deploy.core.capabilities import (
    AUTO_DENSE_FORM,
    AUTO_FORM,
    AUTO_SPARSE_FORM,
    OPENVINO_AUTO_SPARSE_FORM,
    OPENVINO_ONLY_FORMS,
)


def auto_form(config) -> tuple[str, str]:
    """The conv form for ``model.onnx`` and the reason, for a model ``config`` (whatever targets are built
    beside it: ``model.onnx`` is the portable file of every export)."""
    if not config.sparse:
        return AUTO_DENSE_FORM, "dense model: no per-patch conv, every form is one graph; matmul's batch is dynamic"
    return AUTO_SPARSE_FORM, ("sparse model: grouped is standard ONNX every runtime runs, the fastest portable "
                              "form on CPUs, and what ONNX Runtime specialises to NCHWc at load")


def openvino_form(config, conv_form: str) -> tuple[str | None, str | None]:
    """OpenVINO's own form and why, or (None, None) when its IR is lowered from ``model.onnx``."""
    if conv_form in OPENVINO_ONLY_FORMS:
        return conv_form, "asked for"
    if conv_form == AUTO_FORM and config.sparse:
        return OPENVINO_AUTO_SPARSE_FORM, ("sparse model: built from OpenVINO opsets with the patch batch "
                                           "folded into channels head to tail (no layout Reorders around the per-patch "
                                           "convs; bias, ReLU and residual on one tensor)")
    return None, None
