"""The OpenVINO backend: the runner, OpenVINO imported with telemetry off, bf16 detection."""
