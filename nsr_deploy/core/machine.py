"""What CPU this is: the model name and the SIMD flags conv kernels care about (from /proc/cpuinfo on
Linux). Printed beside every figure the bench reports, and part of what ``backend="auto"`` keys its
measured choice on: the fastest engine on an AVX2 CPU is not the fastest on one with AMX."""

from __future__ import annotations

import platform

# the flags that select different kernels in the runtimes (AVX2, AVX-512, VNNI int8, BF16, AMX)
CPU_FLAGS = ("avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "asimddp", "sve", "bf16", "i8mm")


def cpu_info() -> dict:
    """``{"model": name, "flags": [the CPU_FLAGS it has]}`` (on ARM, /proc/cpuinfo's Features line)."""
    model, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    have = set(value.split())
                    flags = [flag for flag in CPU_FLAGS if flag in have]
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "flags": flags}


def describe_cpu(info: dict | None = None) -> str:
    """One line: ``AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16)``."""
    info = info or cpu_info()
    return f"{info['model']} ({' '.join(info['flags']) or 'no listed SIMD flags'})"
