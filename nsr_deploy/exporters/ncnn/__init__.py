"""The ``ncnn`` target: ``model.ncnn.param`` + ``model.ncnn.bin`` through pnnx."""
