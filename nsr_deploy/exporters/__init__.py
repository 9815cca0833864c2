"""Exporters: one package per target (``onnx``, ``openvino``, ``tensorrt``, ``ncnn``, ``executorch``, ``triton``),
each with a ``target.py`` that says what the target builds, how it is gated and where it runs
(:mod:`nsr_deploy.exporters.target` is the protocol); the pipeline, the output folder, the options each target
honours, the conv-form rule and the conformance vectors are shared, beside them."""
