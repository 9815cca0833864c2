"""Where an export folder runs: per target, the devices and runtimes its engine file loads in.

Written into ``nsr.json`` (``runs_on``) and printed by ``nsr-deploy export``, so whoever ships the folder
knows which files a device can use before trying. Each target module says it (its ``runs_on(entry,
tools)``); this is the one place that asks them all. Stated from what each format is: the ONNX model is
standard ONNX at an IR version / opset ONNX Runtime >= 1.17 reads; an OpenVINO IR needs the OpenVINO that
wrote it or newer; a TensorRT engine is tied to its TensorRT version and GPU model; a ``.pte`` needs an
ExecuTorch runtime with the delegate it was lowered for (XNNPACK).
"""

from __future__ import annotations

from collections.abc import Callable


def runs_on(manifest: dict, module_of: Callable) -> dict[str, list[str]]:
    """Target -> where its engine runs, for every target in ``manifest`` whose module says
    (``module_of(name)``: the target's module)."""
    tools = manifest.get("tools", {})
    out = {}
    for name, entry in manifest.get("targets", {}).items():
        where = getattr(module_of(name), "runs_on", None)
        if where is not None:
            out[name] = where(entry, tools)
    return out
