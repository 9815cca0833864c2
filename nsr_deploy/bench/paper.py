"""The paper's CPU timing (Fan et al., NeurIPS 2020, Section 4.2 "Computation time", Figure 5).

One sparse conv layer in PyTorch on a quad-core Intel Core i5-2500 at 3.30 GHz: batch 100, 64 input
and 64 output channels, 64x64 patches, the mean of 100 runs, in milliseconds. "Fixed model size"
keeps the baseline's parameter count (each of the k groups has 64/k output channels); "fixed FLOPs"
keeps the per-patch compute (each group has 64 output channels, k times the parameters). The claim:
about k-fold saving at fixed size, and 5-10% overhead at fixed FLOPs.

The absolute figures are printed as the paper gives them. Read them with care: one baseline call is
30 GFLOP (100 x 64 x 64 pixels x 64 x 64 x 9 multiply-adds x 2), which 1.96 ms would put at 15 TFLOP/s
on a 2011 desktop CPU; the figures fit per-patch time (1.96 ms per 64x64 patch is 154 GFLOP/s, near
that CPU's peak). The ratios to each side's own baseline compare across machines either way.
"""

from __future__ import annotations

MACHINE = "Intel Core i5-2500 @ 3.30 GHz, 4 cores, PyTorch (paper, Figure 5)"
PROTOCOL = {"batch": 100, "channels": 64, "patch": 64, "runs": 100, "statistic": "mean"}
BASELINE_MS = 1.96
FIXED_SIZE_MS = {2: 1.17, 4: 0.77, 8: 0.56, 16: 0.70}
FIXED_FLOPS_MS = {2: 2.12, 4: 2.12, 8: 2.08, 16: 2.08}


def paper_ms(protocol: str, k: int) -> float | None:
    """The paper's milliseconds for ``protocol`` ("baseline", "fixed size", "fixed FLOPs") at ``k``."""
    if protocol == "baseline":
        return BASELINE_MS
    table = FIXED_SIZE_MS if protocol == "fixed size" else FIXED_FLOPS_MS
    return table.get(k)


def paper_ratio(protocol: str, k: int) -> float | None:
    ms = paper_ms(protocol, k)
    return None if ms is None else ms / BASELINE_MS


def as_dict() -> dict:
    return {"machine": MACHINE, "protocol": PROTOCOL, "baseline_ms": BASELINE_MS,
            "fixed_size_ms": FIXED_SIZE_MS, "fixed_flops_ms": FIXED_FLOPS_MS,
            "note": "absolute figures as printed; they fit per-patch time, see nsr_deploy.bench.paper"}
