"""The int8 keep-float search, written once for both int8 routes (NNCF's, and the per-patch one of
:mod:`.sparse_int8`): quantise, judge on the task, and while the gate fails, try again with more of the
layers that touch the image kept float. The first attempt that passes is kept; each attempt's figures go
into ``nsr.json`` so a user sees what was tried.

Why those layers: the head, tail and skip are thin convs between the image and the wide body; they carry
about 1% of the FLOPs but most of the quantisation error (measured on sr-x2, per-patch route: every conv
int8 drops 0.19 dB, tail and skip float 0.11, head, tail and skip float 0.02).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nsr_deploy.checks.results import GateResult

FIGURES = ("drop_db", "fp32_psnr", "int8_psnr")


@dataclass(frozen=True)
class Int8Attempt:
    """One quantisation tried: which layers it kept float, its task gate, and the route's own record."""

    kept_float: tuple[str, ...]
    gate: GateResult
    passed: bool  # the gate, and whatever else the route requires (every conv executing int8)
    record: object = None  # the route's: what it quantised and how the compiled model runs it

    @property
    def figures(self) -> dict[str, float]:
        """The task gate's drop, fp32 and int8 PSNRs (dB), as ``nsr.json`` lists them."""
        check = self.gate.checks[0]
        return {k: check.figures[k] for k in FIGURES}


def image_facing_layers(cfg, head: bool = True) -> tuple[str, ...]:
    """The layers between the image and the body: head (when asked), tail, and skip when there is one."""
    tail = (f"body.{cfg.num_blocks + 1}",) + (("skip.0",) if cfg.has_skip else ())
    return (("body.0",) if head else ()) + tail


def keep_float_search(attempt: Callable[[tuple[str, ...]], Int8Attempt],
                      keep_float_steps: Iterable[tuple[str, ...]]) -> list[Int8Attempt]:
    """``attempt(kept_float)`` for each step until one passes; every attempt made, the last one kept (or
    failed, when none passed)."""
    attempts: list[Int8Attempt] = []
    for kept in keep_float_steps:
        attempts.append(attempt(tuple(kept)))
        if attempts[-1].passed:
            break
    return attempts
