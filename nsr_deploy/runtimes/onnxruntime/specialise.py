"""Load-time specialisation for ONNX Runtime: the portable ``model.onnx`` rewritten into ORT's blocked
NCHWc form for the CPU it runs on.

The shipped model stays portable (standard ops, any runtime, any CPU). On a CPU whose ONNX Runtime
has NCHWc kernels, the runner reads the network's weights back out of it
(:mod:`.portable_weights`), writes the blocked graph (:mod:`.nchwc_graph`) for the block size probed
here (:mod:`.nchwc_probe`: 8 on AVX2, 16 on AVX-512) and a fixed patch batch, checks it against the
portable model on random patches (max abs <= :data:`MAX_ABS`), and caches it. The cache key is the
portable model's sha256, the ONNX Runtime version, the block size and the batch, so a cached file is
never used on another CPU kind or runtime. Where any step fails the runner keeps the portable model
and says why.

A cache entry is not trusted for being there: beside it a record (``NAME.json``) holds the entry's own
sha256 and the key it was built for (source model sha256, rewrite version, ONNX Runtime version, block,
batch). An entry is used only when it is a regular file whose bytes match its record and the record
matches the model being loaded; the bytes that were hashed are the ones loaded. Anything else (a
replaced, truncated or garbage entry, a missing or foreign record, an entry ONNX Runtime cannot load) is
rebuilt from the verified portable model and written again.

Cache folder: ``$NSR_DEPLOY_CACHE/onnxruntime``, else ``$XDG_CACHE_HOME/nsr-deploy/onnxruntime``, else
``~/.cache/nsr-deploy/onnxruntime``. Files are written to a temp name and renamed (atomic), and only
after the check passed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsr_deploy.core.cache import atomic_write, cache_root
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import MAX_ENGINE_BYTES, parse_json, read_json, read_regular, sha256_bytes

MAX_ABS = 1e-5
CHECK_SEED = 20
CHECK_SIZE = 32  # side of the check patches: any size pools as one patch; small keeps the first load short
REWRITE_VERSION = 1  # bump when nchwc_graph writes another graph for the same input: old entries go unused


@dataclass
class Specialised:
    """What the runner should load: ``data`` (the blocked model, cached at ``path``) or, when ``why`` is set,
    the portable one."""

    path: str | None = None
    block: int = 0
    batch: int | None = None
    cached: bool = False
    max_abs: float | None = None
    why: str | None = None
    quiet: bool = False  # nothing lost by not specialising (a dense model): no warning
    data: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"nchwc": self.why is None, "block": self.block or None, "batch": self.batch, "cached": self.cached,
                "max_abs": self.max_abs, "file": self.path, "why_not": self.why}


def cache_dir() -> Path:
    return cache_root() / "onnxruntime"


def cache_key(model_sha256: str, ort_version: str, block: int, batch: int) -> str:
    return f"{model_sha256[:32]}-ort{ort_version}-b{block}-n{batch}.onnx"


def record_of(path: Path) -> Path:
    """The record beside a cache entry: its sha256 and the key it was built for."""
    return path.with_name(path.name + ".json")


def _expected_record(model_sha256: str, ort_version: str, block: int, batch: int) -> dict:
    return {"source_sha256": model_sha256, "rewrite_version": REWRITE_VERSION, "onnxruntime": ort_version,
            "block": block, "batch": batch}


def read_cached(path: Path, expected: dict) -> bytes | None:
    """The cache entry's bytes when it is a regular file matching its record and the record matches
    ``expected``; None (rebuild it) otherwise."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = read_json(record_of(path), "cache record")
        data = read_regular(path, MAX_ENGINE_BYTES, "cache entry")
    except NSRError:
        return None
    if not isinstance(record, dict) or record.get("sha256") != sha256_bytes(data):
        return None
    if {k: record.get(k) for k in expected} != expected:
        return None
    return data


def write_cached(path: Path, data: bytes, expected: dict) -> None:
    """The entry first, then its record: a reader in between finds them disagree and rebuilds."""
    atomic_write(path, data)
    atomic_write(record_of(path), (json.dumps({**expected, "sha256": sha256_bytes(data)}, indent=1) + "\n").encode())


def session(model, threads: int | None):
    """A CPU InferenceSession of a path or serialized bytes, quiet, ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_any_batch(sess, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Run ``sess`` on ``len(x)`` patches whatever its fixed batch (padded with copies, then dropped)."""
    n = sess.get_inputs()[0].shape[0]
    if not isinstance(n, int) or n == len(x):
        return sess.run(["y"], {"x": x, "valid": valid})[0]
    outs = []
    for i in range(0, len(x), n):
        xb, vb = x[i:i + n], valid[i:i + n]
        m = len(xb)
        reps = np.r_[np.arange(m), np.full(n - m, m - 1)] if m < n else np.arange(m)
        outs.append(sess.run(["y"], {"x": xb[reps], "valid": vb[reps]})[0][:m])
    return np.concatenate(outs)


def check_patches(channels: int, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random patches whose statistics differ (so the sparse routing differs between them) and a
    ``valid`` mask with a padded border, as tiled windows have."""
    rng = np.random.default_rng(CHECK_SEED)
    x = rng.uniform(0, 1, (batch, channels, size, size)).astype(np.float32)
    x *= rng.uniform(0.2, 1.0, (batch, 1, 1, 1)).astype(np.float32)
    valid = np.ones((batch, 1, size, size), np.float32)
    valid[:, :, :, -3:] = 0.0
    return x, valid


def contract_of(model) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    if "nsr_manifest" not in props:
        raise ValueError("the model carries no nsr_manifest metadata")
    try:
        return parse_json(props["nsr_manifest"], "nsr_manifest")
    except NSRError as e:
        raise ValueError(str(e)) from None


def specialise(data: bytes, batch: int, threads: int | None = None, portable_session=None,
               refresh: bool = False) -> Specialised:
    """The blocked twin of the portable model ``data`` (its verified bytes) for ``batch`` patches, from the
    cache or built and checked now; ``why`` says why not (then the caller runs the portable model).
    ``portable_session``: a callable giving an ONNX Runtime session of the portable model, to share one
    between calls. ``refresh``: rebuild even if a valid-looking entry exists (it failed to load)."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        return Specialised(batch=batch, why=f"{e.name} is not installed (pip install 'nsr-deploy[runtime]')")
    from nsr_deploy.core.config import NSRConfig
    from nsr_deploy.runtimes.onnxruntime.nchwc_probe import mlas_block_size

    model = onnx.load_from_string(data)
    try:
        sparse = NSRConfig.from_dict(contract_of(model)["model"]["config"]).sparse
    except (ValueError, KeyError, TypeError) as e:
        return Specialised(batch=batch, why=f"no NSR contract in its metadata ({e})")
    if not sparse:  # ONNX Runtime blocks constant-weight convs itself
        return Specialised(batch=batch, why="a dense model: ONNX Runtime blocks its convs itself", quiet=True)
    block = mlas_block_size()
    if block <= 1:
        # ARM, or an x86 CPU without AVX2: the portable model is all ONNX Runtime has there, nothing is lost
        return Specialised(batch=batch, why="this ONNX Runtime has no NCHWc kernels on this CPU", quiet=True)
    source_sha = hashlib.sha256(data).hexdigest()
    target = cache_dir() / cache_key(source_sha, ort.__version__, block, batch)
    expected = _expected_record(source_sha, ort.__version__, block, batch)
    cached = None if refresh else read_cached(target, expected)
    if cached is not None:
        return Specialised(str(target), block, batch, cached=True, data=cached)
    try:
        blocked = build(model, block, batch)
    except Exception as e:  # noqa: BLE001 - any failure to read or rewrite keeps the portable model
        return Specialised(block=block, batch=batch, why=f"cannot rewrite it: {str(e).splitlines()[0][:200]}")
    blocked_bytes = blocked.SerializeToString()
    try:
        reference = portable_session() if portable_session else session(data, threads)
        max_abs = verify(blocked_bytes, reference, threads, blocked)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types
        return Specialised(block=block, batch=batch, why=f"ONNX Runtime cannot run the blocked form "
                                                          f"({str(e).splitlines()[0][:200]})")
    if not max_abs <= MAX_ABS:
        return Specialised(block=block, batch=batch, max_abs=max_abs,
                           why=f"the blocked form differs from the portable one by {max_abs:.3g} > {MAX_ABS:g}")
    try:
        write_cached(target, blocked_bytes, expected)
    except OSError:  # a read-only home: run it from memory, checked just now
        return Specialised(None, block, batch, max_abs=max_abs, data=blocked_bytes)
    return Specialised(str(target), block, batch, max_abs=max_abs, data=blocked_bytes)


def build(model, block: int, batch: int):
    """The blocked ONNX model of a portable one (raises where it cannot)."""
    from nsr_deploy.core.config import NSRConfig
    from nsr_deploy.runtimes.onnxruntime.nchwc_graph import build_blocked_network, unsupported_reason
    from nsr_deploy.runtimes.onnxruntime.portable_weights import read_weights

    contract = contract_of(model)
    config = NSRConfig.from_dict(contract["model"]["config"])
    why = unsupported_reason(config.units, config.block_width, block)
    if why:
        raise ValueError(why)
    weights = read_weights(model, config, contract.get("conv_form", "grouped"))
    blocked = build_blocked_network(weights, batch, block)
    props = {"nsr_manifest": json.dumps({**contract, "conv_form": "nchwc", "io": {
        **contract["io"], "static_batch": batch}}, sort_keys=True), "nsr_nchwc_block": str(block)}
    from onnx import helper

    helper.set_model_props(blocked, props)
    return blocked


def verify(blocked_bytes: bytes, portable_session, threads: int | None, blocked) -> float:
    """Max abs difference between the blocked and the portable model on random patches."""
    contract = contract_of(blocked)
    cfg = contract["model"]["config"]
    batch = contract["io"]["static_batch"]
    x, valid = check_patches(cfg["channels"], batch, CHECK_SIZE)
    want = run_any_batch(portable_session, x, valid)
    got = session(blocked_bytes, threads).run(["y"], {"x": x, "valid": valid})[0]
    return float(np.max(np.abs(got - want)))
