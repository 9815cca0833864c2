"""Budgets for sizes that come from untrusted files, checked before anything is allocated.

An image header, a checkpoint's declared tensor shapes or a JSON config can ask for any size; these
limits turn "a 69-byte file asks for 40 GB" into one ``error:`` line in milliseconds. Torch-free:
the runtimes use the same budgets.

- image pixels (width x height of one input image): ``--max-pixels`` or ``NSR_MAX_PIXELS``;
- checkpoint tensor elements (all tensors together): ``NSR_MAX_TENSOR_ELEMENTS``;
- model configuration values: :data:`CONFIG_BOUNDS` (fixed: far beyond any trained NSR model).
"""

from __future__ import annotations

import math
import os

from nsr_deploy.errors import NSRError

# A 12 Mpx photo restored x2 peaks at 1.04 GiB (README, restore): 40 Mpx (8000 x 5000) is about 3.5 GiB,
# leaving room on a 24 GB machine for x4 models (4x the output area) and the reference tiling.
DEFAULT_MAX_PIXELS = 40_000_000
PIXELS_ENV = "NSR_MAX_PIXELS"
# 256 M float32 elements = 1 GiB of weights: ~100x the largest NSR model of the paper.
DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 28
TENSOR_ELEMENTS_ENV = "NSR_MAX_TENSOR_ELEMENTS"
# nsr.json and the native model .json are a few KB; refuse to parse megabytes of them.
MAX_JSON_BYTES = 4 << 20

# field -> (type, lowest, highest): every value a model description may hold.
CONFIG_BOUNDS = {
    "channels": (int, 1, 4),
    "scale": (int, 1, 8),
    "num_blocks": (int, 0, 256),
    "units": (int, 1, 1024),
    "block_width": (int, 1, 8192),
    "groups": (int, 1, 64),
    "cardinals": (int, 1, 256),
    "patch_size": (int, 4, 4096),
    "image_mean": (float, -1.0, 2.0),
    "width_multiplier": (float, 0.0, 64.0),
    "sparse": (bool, None, None),
    "task": (str, None, None),
}

_override_pixels: int | None = None


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text.replace("_", ""))
    except ValueError:
        raise NSRError(f"{what} must be a positive whole number, got {text!r}") from None
    if value < 1:
        raise NSRError(f"{what} must be a positive whole number, got {text!r}")
    return value


def set_max_pixels(value: int | None) -> None:
    """The ``--max-pixels`` option: wins over the environment for this process."""
    global _override_pixels
    if value is not None and value < 1:
        raise NSRError(f"--max-pixels must be >= 1, got {value}")
    _override_pixels = value


def max_pixels() -> int:
    if _override_pixels is not None:
        return _override_pixels
    env = os.environ.get(PIXELS_ENV)
    return _positive_int(env, PIXELS_ENV) if env else DEFAULT_MAX_PIXELS


def check_pixels(width: int, height: int, where: str) -> None:
    """Refuse an image of ``width`` x ``height`` over the pixel budget (read from its header)."""
    budget = max_pixels()
    if width < 1 or height < 1:
        raise NSRError(f"{where}: empty image ({width}x{height})")
    if width * height > budget:
        raise NSRError(f"{where}: {width}x{height} = {width * height / 1e6:.1f} Mpx is over the pixel budget "
                       f"({budget / 1e6:g} Mpx); raise it with --max-pixels or {PIXELS_ENV} if this machine "
                       f"has the memory")


def max_tensor_elements() -> int:
    env = os.environ.get(TENSOR_ELEMENTS_ENV)
    return _positive_int(env, TENSOR_ELEMENTS_ENV) if env else DEFAULT_MAX_TENSOR_ELEMENTS


def check_tensor_elements(total: int, where: str) -> None:
    budget = max_tensor_elements()
    if total > budget:
        raise NSRError(f"{where}: declares {total:,} weight elements, over the budget of {budget:,} "
                       f"(set {TENSOR_ELEMENTS_ENV} to raise it)")


def check_config_values(doc: object, where: str = "model configuration") -> None:
    """Types and ranges of a model configuration dict, field by field, before anything is built."""
    if not isinstance(doc, dict):
        raise NSRError(f"{where}: expected an object, got {type(doc).__name__}")
    for key, value in doc.items():
        if key not in CONFIG_BOUNDS:
            continue  # unknown keys are the config's own error
        kind, low, high = CONFIG_BOUNDS[key]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise NSRError(f"{where}: {key} must be {kind.__name__}, got {value!r:.60}")
        if low is not None and not low <= value <= high:
            raise NSRError(f"{where}: {key}={value} is outside {low}..{high}")


def read_small_text(path) -> str:
    """A JSON description (``nsr.json``, a native model's ``.json``), refused over :data:`MAX_JSON_BYTES`."""
    from pathlib import Path

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise NSRError(f"{path}: {size:,} bytes is too large for a model description (limit {MAX_JSON_BYTES:,})")
    return path.read_text(encoding="utf-8")
