"""Facts about the machine a bench ran on, and its measured sgemm rate.

Latency means little without the machine: the report carries the CPU model, cores, the threads
every backend used, library versions and the load average before and after (a busy machine gives
noisy figures, and the load says so). The sgemm rate is this machine's practical fp32 peak with the
same thread count, measured in the same run, so "effective GFLOP/s of the model engine as a
fraction of sgemm" compares across machines. Engines at a reduced precision are read against the peak
of their own precision (bf16, int8 GEMM), measured the same way: like with like.
"""

from __future__ import annotations

import os
import platform
import sys

from nsr_deploy.core.machine import cpu_info

LIBRARIES = ("numpy", "torch", "onnx", "onnxsim", "onnxruntime", "openvino", "nncf", "matplotlib", "pillow")
SGEMM_SIZE = 2048


def usable_cores() -> int:
    """CPUs this process may run on (affinity), which is what thread counts should respect."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _openvino_cpu_name() -> str | None:
    """OpenVINO's name for the CPU: the full brand string, where /proc/cpuinfo may be terse (VMs)."""
    try:
        from nsr_deploy.runtimes.openvino.quiet_import import ov

        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:  # openvino missing or no CPU plugin: the fact is optional
        return None


def library_versions() -> dict:
    from nsr_deploy.exporters.common import tool_versions

    return {"python": sys.version.split()[0], **tool_versions(*LIBRARIES)}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_facts(threads: int) -> dict:
    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "cpu_openvino": _openvino_cpu_name(),
        "cpu_flags": cpu["flags"],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "threads": threads,
        "os": f"{platform.system()} {platform.release()}",
        "load_average_start": load_average(),
        "versions": library_versions(),
    }


def _numpy_threads(threads: int):
    """numpy's BLAS limited to ``threads`` (threadpoolctl), or None when it cannot be limited."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def _rate(call, size: int, runs: int, warmup: int) -> dict:
    from nsr_deploy.core.timing import measure

    timing = measure(call, runs, warmup)
    flops = 2.0 * size ** 3
    return {"gflops": round(flops / (timing.median * 1e6), 2), "best_gflops": round(flops / (timing.min * 1e6), 2),
            **timing.as_dict()}


def sgemm_rate(threads: int, size: int = SGEMM_SIZE, runs: int = 5, warmup: int = 1) -> dict:
    """fp32 ``size``-cubed matrix multiply with ``threads`` threads through each BLAS at hand (PyTorch's,
    and numpy's when threadpoolctl can hold it to the same threads); the machine's rate is the faster
    library's median. It is the denominator of every "of sgemm" figure in the report."""
    import numpy as np
    import torch

    from nsr_deploy.core.timing import torch_threads

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(size, size, generator=gen), torch.rand(size, size, generator=gen)
    out = torch.empty(size, size)
    libraries = {}
    with torch_threads(threads), torch.no_grad():
        libraries["torch.mm"] = _rate(lambda: torch.mm(a, b, out=out), size, runs, warmup)
    limit = _numpy_threads(threads)
    if limit is not None:
        an, bn, on = a.numpy(), b.numpy(), np.empty((size, size), np.float32)
        with limit:
            libraries["numpy.matmul"] = _rate(lambda: np.matmul(an, bn, out=on), size, runs, warmup)
    best = max(libraries, key=lambda k: libraries[k]["gflops"])
    return {"gflops": libraries[best]["gflops"], "library": best, "size": size, "threads": threads,
            "statistic": "median", "libraries": libraries}


def _bf16_gemm(a, b):
    import torch

    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    out = torch.empty_like(a)
    return lambda: torch.mm(a, b, out=out)


def _int8_gemm(a, b):
    import torch

    a, b = (torch.round(m * 254 - 127).to(torch.int8) for m in (a, b))
    return lambda: torch._int_mm(a, b)  # int8 x int8 -> int32, what int8 engines' convs compute


GEMM_KERNELS = {"bf16": ("torch.mm bf16", _bf16_gemm), "int8": ("torch._int_mm int8", _int8_gemm)}


def gemm_peak(precision: str, threads: int, size: int = SGEMM_SIZE, runs: int = 5, warmup: int = 1) -> dict | None:
    """The practical peak at ``precision`` (bf16 or int8), measured as :func:`sgemm_rate` is: a ``size``-cubed
    product with ``threads`` threads, median of ``runs``. None when torch cannot run that product here."""
    import torch

    from nsr_deploy.core.timing import torch_threads

    library, make = GEMM_KERNELS[precision]
    gen = torch.Generator().manual_seed(0)
    with torch_threads(threads), torch.no_grad():
        try:
            call = make(torch.rand(size, size, generator=gen), torch.rand(size, size, generator=gen))
            rate = _rate(call, size, runs, warmup)
        except (RuntimeError, NotImplementedError):  # no kernel for it in this torch build / CPU
            return None
    return {"gflops": rate["gflops"], "library": library, "precision": precision, "size": size, "threads": threads,
            "statistic": "median", "libraries": {library: rate}}


def peak_of(precision: str, peaks: dict) -> tuple[dict | None, str]:
    """The peak a ``precision`` engine is read against, and its name: its own precision's when measured, else
    fp32 sgemm, named as such so that nobody reads a bf16 engine against an fp32 peak unawares."""
    own = peaks.get(precision)
    if own:
        return own, "sgemm" if precision == "fp32" else f"{precision} GEMM"
    return peaks.get("fp32"), "sgemm" if precision == "fp32" else f"fp32 sgemm (no {precision} peak here)"
