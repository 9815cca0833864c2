"""Parity and latency harness, the paper's CPU protocol, quality suites and reports (``nsr-deploy bench``).

    from nsr_deploy.bench import BenchSettings, run_bench
    report = run_bench(BenchSettings.preset("quick"), model="sr-x2")

Names are imported on first use, so that loading the CLI (which registers the bench command) stays light.
"""

_EXPORTS = {"run_bench": "nsr_deploy.bench.api", "BenchSettings": "nsr_deploy.bench.settings",
            "LayerProtocol": "nsr_deploy.bench.settings", "ModelProtocol": "nsr_deploy.bench.settings",
            "ParityProtocol": "nsr_deploy.bench.settings", "QualityProtocol": "nsr_deploy.bench.settings"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nsr_deploy.bench' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
