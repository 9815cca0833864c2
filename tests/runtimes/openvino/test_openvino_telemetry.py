"""nsr-deploy imports OpenVINO with its usage telemetry off (runtimes/ov_import.py): nothing is sent and
no process is forked, which could hang beside a busy thread; the caller's environment is left as it was."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("openvino")

PROBE = """
import json, os, threading
from nsr_deploy.runtimes.openvino.runner import unavailable
assert unavailable() is None
from openvino_telemetry.main import Telemetry
print(json.dumps({"consent": Telemetry().consent, "ci": os.environ.get("CI"),
                  "threads": [t.name for t in threading.enumerate()]}))
"""


@pytest.mark.parametrize("ci", [None, "false"])
def test_openvino_is_imported_with_telemetry_off_and_the_environment_kept(ci):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    if ci is not None:
        env["CI"] = ci
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["consent"] is False and got["ci"] == ci
    assert got["threads"] == ["MainThread"]  # no telemetry sender thread was started
