"""Budgets for sizes that come from untrusted files, checked before anything is allocated.

An image header, a checkpoint's declared tensor shapes or a JSON config can ask for any size; these
limits turn "a 69-byte file asks for 40 GB" into one ``error:`` line in milliseconds. Torch-free:
the runtimes use the same budgets.

- image pixels (width x height of one input image): ``--max-pixels`` or ``NSR_MAX_PIXELS``;
- checkpoint tensor elements (all tensors together): ``NSR_MAX_TENSOR_ELEMENTS``;
- the memory one image's restoration needs (input, output at scale^2, blend weights, the tile batch):
  ``--max-memory`` or ``NSR_MAX_MEMORY``, by default what this process can still get (available memory,
  address-space limit);
- checkpoint and safetensors files: :func:`max_checkpoint_bytes` on disk and declared inside;
- model configuration values: :data:`CONFIG_BOUNDS` (fixed: far beyond any trained NSR model);
- ``--threads``: at most the CPUs this process may run on (:func:`check_threads`); batches of patches:
  at most :data:`MAX_BATCH`, as the manifest allows (:func:`check_batch`).
"""

from __future__ import annotations

import math
import os

from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import MAX_JSON_BYTES, parse_json, read_regular

# A 12 Mpx photo restored x2 peaks at 1.04 GiB (README, restore): 40 Mpx (8000 x 5000) is about 3.5 GiB,
# leaving room on a 24 GB machine for x4 models (4x the output area) and the reference tiling.
DEFAULT_MAX_PIXELS = 40_000_000
PIXELS_ENV = "NSR_MAX_PIXELS"
# 256 M float32 elements = 1 GiB of weights: ~100x the largest NSR model of the paper.
DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 28
TENSOR_ELEMENTS_ENV = "NSR_MAX_TENSOR_ELEMENTS"
# A checkpoint's bytes per budgeted element: float32 weights plus the two Adam moments the trainer
# saves beside them; the slack covers the pickle, record names and small extras (epoch, scheduler).
CHECKPOINT_BYTES_PER_ELEMENT = 12
CHECKPOINT_SLACK_BYTES = 64 << 20
MEMORY_ENV = "NSR_MAX_MEMORY"
# the largest batch of patches one engine call takes; nsr.schema.json caps static_batch at the same
MAX_BATCH = 4096

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
_override_memory: int | None = None


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
    """A JSON description (``nsr.json``, a native model's ``.json``) as text: a regular file of at most
    :data:`MAX_JSON_BYTES`, read through one descriptor, its nesting and integers already checked."""
    data = read_regular(path, MAX_JSON_BYTES, "model description")
    parse_json(data, str(path))  # bounded depth and digits: the caller's json.loads cannot blow up
    return data.decode("utf-8")


def max_checkpoint_bytes() -> int:
    """The largest checkpoint or safetensors file read, on disk and as its records declare inflated."""
    return CHECKPOINT_BYTES_PER_ELEMENT * max_tensor_elements() + CHECKPOINT_SLACK_BYTES


# -- threads and batches --------------------------------------------------------------------------
def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask): more threads than that only contend."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_threads(threads: int | None, where: str = "--threads") -> None:
    """Refuse a thread count below 1 or above the usable CPUs (thousands of threads deadlock runtimes)."""
    if threads is None:
        return
    cpus = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise NSRError(f"{where} {threads!r:.20}: must be 1..{cpus} (the CPUs this process may use; "
                       f"more threads only contend for them)")


def check_batch(batch: int | None, where: str) -> None:
    """Refuse a batch of patches below 1 or above :data:`MAX_BATCH`, what a manifest may hold."""
    if batch is None:
        return
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise NSRError(f"{where} {batch!r:.20}: must be 1..{MAX_BATCH} patches per engine call")


# -- memory ---------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_bytes(text: str, what: str) -> int:
    """``8G``, ``8GiB``, ``512M``, ``8e9`` or a plain number of bytes (K/M/G alone are binary)."""
    raw = text.strip().lower().replace("_", "")
    number = raw.rstrip("bikmgt ")
    unit = raw[len(number):].strip()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise NSRError(f"{what} must be a size in bytes such as 8G or 512MiB, got {text!r:.40}") from None
    if not math.isfinite(value) or value < 1:
        raise NSRError(f"{what} must be a positive size in bytes, got {text!r:.40}")
    return int(value)


def set_max_memory(value: int | str | None) -> None:
    """The ``--max-memory`` option: wins over the environment for this process."""
    global _override_memory
    _override_memory = parse_bytes(str(value), "--max-memory") if value is not None else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f.read(1 << 16).decode("ascii", "replace").splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_left() -> int | None:
    """What ``RLIMIT_AS`` still allows this process (None: no limit, or not knowable here)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", "rb") as f:
            used = int(f.read(256).split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(0, limit - used)
    except (ImportError, OSError, ValueError, IndexError):
        return None


def available_memory() -> int:
    """The memory this process can still get: the machine's available memory (MemAvailable, else all of
    its RAM), and no more than an address-space limit leaves."""
    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = 8 << 30
    left = _address_space_left()
    return found if left is None else min(found, left)


def max_memory() -> tuple[int, str]:
    """The memory budget of one image's restoration, in bytes, and where it comes from."""
    if _override_memory is not None:
        return _override_memory, "--max-memory"
    env = os.environ.get(MEMORY_ENV)
    if env:
        return parse_bytes(env, MEMORY_ENV), MEMORY_ENV
    return available_memory(), "the memory available to this process"


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 26 else f"{n / (1 << 20):.1f} MiB"


def check_memory(needed: int, where: str, what: str, parts: str = "") -> None:
    """Refuse work that needs ``needed`` bytes over the memory budget: ``what`` needs it, ``parts`` says of what."""
    budget, source = max_memory()
    if needed > budget:
        of = f" ({parts})" if parts else ""
        raise NSRError(f"{where}: {what} needs about {gib(needed)}{of}, over the memory budget of {gib(budget)} "
                       f"({source}); raise it with --max-memory or {MEMORY_ENV} if this machine has the memory")
