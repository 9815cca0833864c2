"""Where an export folder runs: per target, the devices and runtimes its engine file loads in.

Written into ``nsr.json`` (``runs_on``) and printed by ``nsr-deploy export``, so whoever ships the folder
knows which files a device can use before trying. Stated from what each format is, not measured on
every device: the ONNX model is standard ONNX at an IR version / opset ONNX Runtime >= 1.17 reads
(and the node / web packages are tested); an OpenVINO IR needs the OpenVINO that wrote it or newer; a
TensorRT engine is tied to its TensorRT version and GPU model; a ``.pte`` needs an ExecuTorch runtime with the
delegate it was lowered for (XNNPACK).
"""

from __future__ import annotations

ORT_MIN = "1.17"


def onnx_runs_on(entry: dict) -> list[str]:
    batch = f", fixed batch of {entry['static_batch']} patches" if entry.get("static_batch") else ""
    return [f"ONNX Runtime >= {ORT_MIN} on any CPU (x86-64, ARM64) or GPU: Python, C/C++, C#, Java, Node.js "
            f"(onnxruntime-node), browsers (onnxruntime-web, WebAssembly); IR version {entry.get('ir_version')}{batch}",
            "ONNX Runtime on x86 CPUs: rewritten at load into its blocked NCHWc form for that CPU (cached)",
            "any other ONNX runtime with the standard ops (Conv, MatMul, Softmax, ReduceMean, DepthToSpace)"]


def openvino_runs_on(entry: dict, tools: dict) -> list[str]:
    return [f"OpenVINO >= {tools.get('openvino')} on x86-64 (Intel, AMD) and ARM64 CPUs, precision "
            f"{entry.get('precision')}"]


def tensorrt_runs_on(entry: dict, tools: dict) -> list[str]:
    gpu = entry.get("gpu") or tools.get("gpu") or "the GPU it was built on"
    return [f"TensorRT {tools.get('tensorrt')} on {gpu} only (engines are tied to the TensorRT version and GPU model)"]


def executorch_runs_on(entry: dict, tools: dict) -> list[str]:
    side = (entry.get("size") or {}).get("max_side")
    return [f"ExecuTorch >= {tools.get('executorch')} built with the XNNPACK backend (Android, iOS, Linux; ARM64 and "
            f"x86-64 CPUs), {entry.get('io_dtype')} in and out, one patch per call, sides up to {side}"]


def runs_on(manifest: dict) -> dict[str, list[str]]:
    """Target -> where its engine runs, for every target in ``manifest``."""
    tools = manifest.get("tools", {})
    out = {}
    for name, entry in manifest.get("targets", {}).items():
        if name == "onnx":
            out[name] = onnx_runs_on(entry)
        elif name == "openvino":
            out[name] = openvino_runs_on(entry, tools)
        elif name == "tensorrt":
            out[name] = tensorrt_runs_on(entry, tools)
        elif name == "executorch":
            out[name] = executorch_runs_on(entry, tools)
        elif name == "triton":
            out[name] = ["Triton Inference Server, with the backends of the engines it holds"]
    return out
