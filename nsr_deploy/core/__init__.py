"""The torch-free core every layer may import: the capability table, config, budgets, errors, geometry,
hashing, bounded reads, degradations and timing. It imports nothing else of nsr-deploy."""
