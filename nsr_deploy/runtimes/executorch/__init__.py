"""The ExecuTorch backend: the runner for ``model.pte`` (XNNPACK delegate)."""
