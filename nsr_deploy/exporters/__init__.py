"""Exporters: one file per target (onnx, openvino, tensorrt, triton)."""
