"""Parity and latency harness, the paper's CPU protocol, quality suites and reports."""
