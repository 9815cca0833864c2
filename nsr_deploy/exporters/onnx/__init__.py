"""The ``onnx`` target: ``model.onnx`` (+ ``model.fp16.onnx``), the ONNX graph, ``--conv-form tune``."""
