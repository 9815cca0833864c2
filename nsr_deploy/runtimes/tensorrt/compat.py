"""The TensorRT calls that differ between 10.x and 11.x, in one place (``trt`` is the imported module).

Checked against (cite the same when updating this file):
  * the TensorRT 11.x migration guide, "Removed Python APIs and Replacements"
    (docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x-python-api-reference.html)
    and "Strongly Typed Networks Are Now Required" (.../tensorrt-10x-to-11x.html);
  * the Python bindings of NVIDIA/TensorRT at tags v10.0.0, v10.8.0, v10.16, v11.0 and v11.1
    (``python/src/infer/pyCore.cpp``, ``python/docstrings/infer/pyCoreDoc.h``, ``parsers/pyOnnx.cpp``).

Every other call nsr-deploy makes (ONNX parser and its errors, builder config memory pool, optimisation
profiles, timing cache, ``build_serialized_network``, ``Runtime.deserialize_cuda_engine``, the
name-based tensor API, ``execute_async_v3``, ``nptype``, the logger severities) is bound under the same
name and signature in all of those tags.
"""

from __future__ import annotations

SUPPORTED_MAJORS = (10, 11)


def major_of(version: str) -> int:
    """``"11.4.0.12"`` -> 11 (0 when unparsable)."""
    digits = "".join(ch for ch in str(version).split(".")[0] if ch.isdigit())
    return int(digits) if digits else 0


def version_refusal(version: str) -> str | None:
    """None for a TensorRT major nsr-deploy was checked against, else why it is refused."""
    major = major_of(version)
    if major in SUPPORTED_MAJORS:
        return None
    if major < SUPPORTED_MAJORS[0]:
        return f"TensorRT 10.0 or newer is needed, found {version}"
    return (f"TensorRT {version} is newer than the releases nsr-deploy was checked against "
            f"({' and '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}): pip install 'tensorrt<12'")


def network_flags(trt) -> int:
    """Flags for ``Builder.create_network``: a strongly typed network, so every tensor keeps the type the
    ONNX graph gives it (fp16 engines come from an fp16-typed graph, never from builder flags).

    10.x: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` must be set (weak typing is the default).
    11.x: strong typing is always on; the flag is "deprecated, retained for API compatibility but
    ignored" (11.0 and 11.1 bindings), so it is set while it exists and 0 is passed once it is gone.
    """
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def disable_tf32(trt, config) -> bool:
    """Clear ``BuilderFlag.TF32`` (on by default in 10.x and 11.x: "Allow (but not require) computations
    on tensors of type DataType.FLOAT to use TF32"): fp32 tensors, including the routing an fp16 graph
    keeps in fp32, must compute in fp32 for the parity gates. Strong typing does not turn it off: it
    fixes tensor types, not the inner-product rounding. Returns whether TF32 is off (always, in the
    releases checked; False only if a future release dropped the flag)."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        return False
    config.clear_flag(flag)
    return not config.get_flag(flag)


def device_memory_bytes(engine) -> int:
    """Device memory one execution context needs. 10.0 binds only ``device_memory_size`` (``_v2`` from
    10.1 on); 11.x removed it ("ICudaEngine.device_memory_size -> ICudaEngine.device_memory_size_v2")."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)
