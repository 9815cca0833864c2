"""The ONNX Runtime backend: the runner and its load-time NCHWc specialisation."""
