"""The ``tensorrt`` target: a serialized TensorRT engine (``model.engine``)."""
