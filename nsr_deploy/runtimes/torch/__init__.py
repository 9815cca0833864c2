"""The PyTorch reference backend: the runner every engine is compared against."""
