"""ONNX Runtime's NCHWc block size on this machine (the ``nchwc`` conv form depends on it)."""

from __future__ import annotations

import functools

import numpy as np

DOMAIN = "com.microsoft.nchwc"


@functools.lru_cache(maxsize=1)
def mlas_block_size() -> int:
    """ONNX Runtime's NCHWc block size on this machine (0 if it has no NCHWc kernels).

    Probed with a four-channel ReorderInput: its output pads the channels up to the block size.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=DOMAIN)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return int(sess.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])
    except Exception:  # no NCHWc schemas on this platform/build
        return 0
