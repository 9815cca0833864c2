"""The Triton Inference Server backend: the client-side runner."""
