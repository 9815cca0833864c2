"""The TensorRT backend: the runner, TensorRT 10/11 differences, its logger, CUDA from Python."""
