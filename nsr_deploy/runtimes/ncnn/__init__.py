"""The ncnn backend: the runner for ``model.ncnn.param`` + ``model.ncnn.bin``."""
