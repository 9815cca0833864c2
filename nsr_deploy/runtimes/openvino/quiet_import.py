"""OpenVINO, imported with its usage telemetry off.

``import openvino`` sends a usage event (``openvino.tools.ovc``'s import hook) from a process it forks
in a background thread, unless its telemetry finds a CI job. nsr-deploy sends nothing anywhere, and
that fork can hang the process for good when another thread is busy in BLAS (measured: an export beside
one busy numpy thread, stuck in ``os.fork``). OpenVINO's telemetry decides once per process, when its
singleton is first built during that import, and the only switch it honours without writing into the
user's home is ``CI=true``: set for the import alone, then restored. Every nsr-deploy module imports
OpenVINO through here first.
"""

from __future__ import annotations

import os

_saved = os.environ.get("CI")
os.environ["CI"] = "true"
try:
    import openvino as ov  # noqa: E402
finally:
    if _saved is None:
        os.environ.pop("CI", None)
    else:
        os.environ["CI"] = _saved

__all__ = ["ov"]
