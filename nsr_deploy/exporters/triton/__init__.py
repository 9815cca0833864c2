"""The ``triton`` target: the server engines laid out as a Triton model repository."""
