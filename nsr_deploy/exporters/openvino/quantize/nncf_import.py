"""NNCF, imported with its usage telemetry off (every nsr-deploy import of NNCF goes through here)."""

from __future__ import annotations

import os

from nsr_deploy.core.errors import BackendUnavailable


def require_nncf() -> None:
    # NNCF sends usage telemetry (a forked process per event) unless NNCF_CI is set; nsr-deploy
    # sends nothing anywhere, so it sets it before NNCF is first imported (this is the only import).
    os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf  # noqa: F401

        import nsr_deploy.runtimes.openvino.quiet_import  # noqa: F401 (NNCF imports OpenVINO: its telemetry off first)
    except ImportError:
        raise BackendUnavailable("int8 for OpenVINO needs NNCF: pip install 'nsr-deploy[export]' "
                                 "(or pip install nncf)") from None
