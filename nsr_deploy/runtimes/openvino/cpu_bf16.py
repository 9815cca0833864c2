"""Does this CPU run bfloat16 natively? (AVX-512 BF16 or AMX; OpenVINO reports it as the ``BF16``
optimization capability.) bf16 exports are refused elsewhere, and a runner loading a bf16 engine there
computes in f32 instead. Imports no torch."""

from __future__ import annotations

from pathlib import Path

CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is no such file."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def openvino_capabilities() -> list[str] | None:
    try:
        from nsr_deploy.runtimes.openvino.quiet_import import ov

        return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - no OpenVINO, or no CPU plugin: the flags alone decide
        return None


def bf16_unavailable() -> str | None:
    """None when bf16 runs natively here, else why not (both probes must agree where both exist)."""
    flags, caps = cpu_flags(), openvino_capabilities()
    if flags is not None and not flags & set(CPU_FLAGS):
        return f"this CPU has neither {' nor '.join(CPU_FLAGS)}"
    if caps is not None and "BF16" not in caps:
        return f"OpenVINO's CPU plugin does not list BF16 among its capabilities ({', '.join(caps)})"
    if flags is None and caps is None:
        return "cannot tell: no /proc/cpuinfo and no OpenVINO CPU plugin to ask"
    return None
