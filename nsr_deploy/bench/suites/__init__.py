"""The bench's suites: parity, layer (the paper's Figure 5), model, quality, ray, precisions."""
