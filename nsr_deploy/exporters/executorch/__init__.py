"""The ``executorch`` target: ``model.pte`` lowered with the XNNPACK delegate."""
