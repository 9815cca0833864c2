"""nsr-deploy: export and run Neural Sparse Representation restoration networks on edge devices."""

__version__ = "0.1.0"
