"""Load models: reference-trainer checkpoints (``ychfan/pt_ir``) and our native safetensors format.

Reference checkpoints are ``torch.save`` files of the trainer's dict (``model_state_dict``, ...),
a bare state dict, or either with ``module.`` prefixes. Hyperparameters are not stored; they are
inferred from tensor shapes. Weight normalisation (``weight_g``/``weight_v``, or the newer
``parametrizations.weight.original0/1``) is folded into plain weights. Files are opened with
``torch.load(weights_only=True)``: pickled code is refused and never runs.

Native models: ``NAME.safetensors`` (folded weights, config also in its metadata) + ``NAME.json``.

Every file is read once (a regular file, capped: :func:`nsr_deploy.core.budgets.max_checkpoint_bytes`), its
bytes hashed and loaded from memory, so what was hashed is what was loaded. What those bytes declare is
checked before anything is built from it: a checkpoint's zip records (count, inflated sizes, compression
ratio, placement), a safetensors header (dtypes, shapes, offsets); then the tensors themselves
(:mod:`.tensor_checks`).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nsr_deploy.core.budgets import check_tensor_elements, max_checkpoint_bytes
from nsr_deploy.core.config import KERNEL, SKIP_KERNEL, NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import open_regular, parse_json, read_json, sha256_bytes
from nsr_deploy.models.conv import fold_weight_norm
from nsr_deploy.models.native_doc import NATIVE_FORMAT, native_config
from nsr_deploy.models.network import NSRNet
from nsr_deploy.models.tensor_checks import check_finite, checked_tensors

# A torch.save archive stores its records uncompressed and holds a few records per tensor; a deflated
# record that inflates more than MAX_DEFLATE_RATIO times (beyond a small floor) is a zip bomb: float
# weights barely compress. Its central directory is read before any record: bound it too.
MAX_ZIP_RECORDS = 1 << 16
MAX_CENTRAL_DIRECTORY_BYTES = 16 << 20
MAX_DEFLATE_RATIO = 16
DEFLATE_RATIO_FLOOR = 1 << 20
SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library's own limit
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class LoadedModel:
    net: NSRNet
    source: str
    source_format: str  # "reference" | "native" | "built"
    sha256: str
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def config(self) -> NSRConfig:
        return self.net.config


# ---------------------------------------------------------------------------------------------
# reading the file


def _read_file(path: Path, what: str) -> bytes:
    """All bytes of a checkpoint or weights file: a regular file under the checkpoint cap, read once.
    The read asks for the size ``fstat`` gave, not the cap: a buffer of the cap is gigabytes."""
    f, size = open_regular(path, max_checkpoint_bytes(), what)
    with f:
        try:
            data = f.read(size)
            grew = f.read(1)
        except OSError as e:
            raise NSRError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(data) != size or grew:
        raise NSRError(f"{path}: changed size while being read; read it again once it is complete")
    return data


def _corrupt_zip(path: Path, why: str) -> NSRError:
    return NSRError(f"{path}: truncated or corrupt checkpoint ({why})")


def check_archive(data: bytes, path: Path) -> None:
    """A torch.save zip archive's records, as its central directory declares them, before torch reads any:
    few enough, inside the file, stored or deflated, not a zip bomb, their inflated total under the cap."""
    cap = max_checkpoint_bytes()
    try:
        end = zipfile._EndRecData(io.BytesIO(data))  # the end record only: the directory's declared size
    except (OSError, ValueError, struct.error) as e:
        raise _corrupt_zip(path, f"unreadable zip end record: {e}") from None
    if end is None:
        raise _corrupt_zip(path, "incomplete zip archive")
    if end[zipfile._ECD_SIZE] > MAX_CENTRAL_DIRECTORY_BYTES or end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ZIP_RECORDS:
        raise NSRError(f"{path}: its zip directory declares {end[zipfile._ECD_ENTRIES_TOTAL]:,} records in "
                       f"{end[zipfile._ECD_SIZE]:,} bytes; a checkpoint holds at most {MAX_ZIP_RECORDS:,}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, struct.error) as e:
        raise _corrupt_zip(path, str(e)[:120] or type(e).__name__) from None
    if len(records) > MAX_ZIP_RECORDS:
        raise NSRError(f"{path}: {len(records):,} zip records; a checkpoint holds at most {MAX_ZIP_RECORDS:,}")
    total = 0
    for record in records:
        name = record.filename[:80]
        if record.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise NSRError(f"{path}: zip record {name} is compressed with method {record.compress_type}; "
                           f"torch.save writes stored records (re-save the checkpoint with torch.save)")
        if record.compress_type == zipfile.ZIP_STORED and record.compress_size != record.file_size:
            raise _corrupt_zip(path, f"stored record {name} declares {record.file_size:,} bytes but holds "
                                     f"{record.compress_size:,}")
        if record.header_offset + record.compress_size > len(data):
            raise _corrupt_zip(path, f"record {name} lies past the end of the file")
        if (record.compress_type == zipfile.ZIP_DEFLATED and record.file_size > DEFLATE_RATIO_FLOOR
                and record.file_size > MAX_DEFLATE_RATIO * record.compress_size):
            raise NSRError(f"{path}: zip record {name} inflates {record.compress_size:,} bytes to "
                           f"{record.file_size:,} (over {MAX_DEFLATE_RATIO}x): a zip bomb, not model weights; "
                           f"nothing was inflated")
        total += record.file_size
    if total > cap:
        raise NSRError(f"{path}: its zip records declare {total:,} bytes inflated, over the checkpoint budget of "
                       f"{cap:,} (12 bytes per budgeted weight element; set NSR_MAX_TENSOR_ELEMENTS to raise it)")


def _read_torch_file(path: Path) -> tuple[object, bytes]:
    """The unpickled checkpoint and the bytes it was loaded from (read once, hashed by the caller)."""
    data = _read_file(path, "checkpoint")
    is_zip = data.startswith(b"PK")
    is_legacy_pickle = data[:1] == b"\x80"
    if not (is_zip or is_legacy_pickle):
        raise NSRError(f"{path}: not a PyTorch checkpoint (no torch.save header)")
    if is_zip:
        check_archive(data, path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), data
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise NSRError(
                f"{path}: refused: the checkpoint holds pickled objects beyond tensors "
                f"(possible code execution); nothing in it was run ({first[:160]})"
            ) from None
        raise NSRError(f"{path}: corrupt checkpoint ({first[:160]})") from None
    except MemoryError:
        raise NSRError(f"{path}: not enough memory to load it") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in the unpickler's own ways (KeyError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NSRError(f"{path}: truncated or corrupt checkpoint ({msg[:160]})") from None


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise NSRError(f"{path}: unknown checkpoint layout (expected a state dict or the trainer's "
                       f"dict with 'model_state_dict')")
    tensors = checked_tensors(obj, str(path))
    if not tensors:
        keys = ", ".join(list(map(str, obj))[:5])
        raise NSRError(f"{path}: unknown checkpoint layout: no tensors (top-level keys: {keys})")
    return {(k[7:] if k.startswith("module.") else k): v.float() for k, v in tensors.items()}


def _fold(key: str, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if v.dim() < 2 or g.numel() != v.shape[0]:
        raise NSRError(f"contradictory shapes: {key} has {g.numel()} entries for a weight of "
                       f"shape {list(v.shape)}")
    return fold_weight_norm(g, v)


# weight-norm spellings: (magnitude suffix, direction suffix); old-style torch.nn.utils.weight_norm and the
# parametrization API
WEIGHT_NORM_KEYS = ((".weight_g", ".weight_v"),
                    (".parametrizations.weight.original0", ".parametrizations.weight.original1"))


def fold_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain ``weight`` for every conv, whichever weight-norm spelling the file used."""
    out = {}
    for key, value in sd.items():
        if any(key.endswith(direction) for _, direction in WEIGHT_NORM_KEYS):
            continue
        spelling = next(((g, v) for g, v in WEIGHT_NORM_KEYS if key.endswith(g)), None)
        if spelling is None:
            out[key] = value
            continue
        magnitude, direction = spelling
        prefix = key[: -len(magnitude)]
        v = sd.get(prefix + direction)
        if v is None:
            raise NSRError(f"unknown checkpoint layout: {key} without {prefix}{direction}")
        out[prefix + ".weight"] = _fold(key, value, v)
    return out


# ---------------------------------------------------------------------------------------------
# hyperparameters from shapes


def _shape(sd, key, ndim, what):
    t = sd.get(key)
    if t is None:
        raise NSRError(f"unknown checkpoint layout: missing {key} ({what})")
    if t.dim() != ndim:
        raise NSRError(f"contradictory shapes: {key} has {t.dim()} dims, expected {ndim}")
    return tuple(t.shape)


def infer_config(sd: dict[str, torch.Tensor], image_mean: float = 0.5, patch_size: int = 48) -> NSRConfig:
    """Every hyperparameter of a folded state dict, checked for consistency."""
    if "body.0.weight" not in sd:
        sample = ", ".join(sorted(sd)[:4])
        raise NSRError(f"unknown checkpoint layout: no head conv 'body.0' (keys start: {sample})")
    units, channels, kh, kw = _shape(sd, "body.0.weight", 4, "head conv")
    if (kh, kw) != (KERNEL, KERNEL):
        raise NSRError(f"contradictory shapes: head conv kernel {kh}x{kw}, expected 3x3")
    blocks = 0
    while f"body.{blocks + 1}.body.0.weight" in sd:
        blocks += 1
    tail = f"body.{blocks + 1}.weight"
    out_ch, tail_in, *_ = _shape(sd, tail, 4, "tail conv")
    if tail_in != units:
        raise NSRError(f"contradictory shapes: tail conv takes {tail_in} channels, head gives {units}")
    scale = math.isqrt(out_ch // channels) if out_ch % channels == 0 else 0
    if scale < 1 or scale * scale * channels != out_ch:
        raise NSRError(f"contradictory shapes: tail gives {out_ch} channels, not scale^2 x {channels}")
    sparse = blocks > 0 and "body.1.body.0.mlp.0.weight" in sd
    groups = cardinals = 1
    block_width = units
    for i in range(1, blocks + 1):
        c1 = _shape(sd, f"body.{i}.body.0.weight", 4, f"block {i} conv 1")
        c2 = _shape(sd, f"body.{i}.body.2.weight", 4, f"block {i} conv 2")
        if c1[1] != units or c1[2:] != (KERNEL, KERNEL):
            raise NSRError(f"contradictory shapes: block {i} conv 1 is {list(c1)} for {units} units")
        if i == 1:
            if c2[0] % units:
                raise NSRError(f"contradictory shapes: block 1 conv 2 gives {c2[0]} channels, "
                               f"not a multiple of {units} units")
            groups = c2[0] // units
            if c1[0] % groups:
                raise NSRError(f"contradictory shapes: block 1 conv 1 gives {c1[0]} channels, "
                               f"not divisible by k={groups}")
            block_width = c1[0] // groups
            if not sparse and groups != 1:
                raise NSRError(f"contradictory shapes: block 1 conv 2 gives {c2[0]} channels for "
                               f"{units} units but the model has no sparsity MLP")
        if c1[0] != groups * block_width or c2 != (groups * units, block_width, KERNEL, KERNEL):
            raise NSRError(f"contradictory shapes: block {i} convs {list(c1)} / {list(c2)} differ "
                           f"from block 1")
        for j, cin in ((0, units), (2, block_width)):
            key = f"body.{i}.body.{j}.mlp.0.weight"
            if sparse:
                kd, mlp_in = _shape(sd, key, 2, "sparsity MLP")
                if mlp_in != cin:
                    raise NSRError(f"contradictory shapes: {key} takes {mlp_in} inputs, conv has {cin}")
                if i == 1 and j == 0:
                    if kd % groups:
                        raise NSRError(f"contradictory shapes: {key} gives {kd} logits, not k={groups} x d")
                    cardinals = kd // groups
                elif kd != groups * cardinals:
                    raise NSRError(f"contradictory shapes: {key} gives {kd} logits, expected "
                                   f"{groups * cardinals}")
            elif key in sd:
                raise NSRError(f"contradictory shapes: {key} in a model whose block 1 has none")
    has_skip = "skip.0.weight" in sd
    if has_skip != (out_ch != channels):
        raise NSRError("contradictory shapes: skip conv " + ("present" if has_skip else "missing")
                       + f" for {channels} -> {out_ch} channels")
    if has_skip and _shape(sd, "skip.0.weight", 4, "skip conv") != (out_ch, channels, SKIP_KERNEL, SKIP_KERNEL):
        raise NSRError(f"contradictory shapes: skip conv {list(sd['skip.0.weight'].shape)}")
    return NSRConfig(channels=channels, scale=scale, num_blocks=blocks, units=units,
                     block_width=block_width, sparse=sparse, groups=groups, cardinals=cardinals,
                     image_mean=image_mean, patch_size=patch_size)


def build_net(cfg: NSRConfig, sd: dict[str, torch.Tensor], where: str) -> NSRNet:
    net = NSRNet(cfg)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        raise NSRError(f"{where}: unknown key layout: " + "; ".join(parts))
    for key, t in expected.items():
        if sd[key].shape != t.shape:
            raise NSRError(f"{where}: contradictory shapes: {key} is {list(sd[key].shape)}, "
                           f"expected {list(t.shape)}")
    net.load_state_dict(sd)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# native format


def save_native(net: NSRNet, path: str | Path, meta: dict | None = None) -> tuple[Path, Path]:
    """Write ``PATH.safetensors`` + ``PATH.json``; returns both paths."""
    from safetensors.torch import save_file

    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    doc = {"format": NATIVE_FORMAT, "config": net.config.to_dict(), "meta": meta or {}}
    weights = {k: v.detach().contiguous().float() for k, v in fold_state_dict(net.state_dict()).items()}
    st, js = base.with_suffix(".safetensors"), base.with_suffix(".json")
    base.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(st), metadata={"nsr_deploy": json.dumps(doc, sort_keys=True)})
    js.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return st, js


def _safetensors_header(data: bytes, path: Path) -> dict:
    """The JSON header of a safetensors file, every tensor entry checked against the bytes that follow it
    and the element budget before the library reads any tensor."""
    if len(data) < 8:
        raise NSRError(f"{path}: truncated safetensors file ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > min(SAFETENSORS_HEADER_LIMIT, len(data) - 8):
        raise NSRError(f"{path}: its header declares {size:,} bytes; the file holds {len(data) - 8:,} after it "
                       f"(truncated or not a safetensors file)")
    header = parse_json(data[8:8 + size], f"{path} (safetensors header)")
    if not isinstance(header, dict):
        raise NSRError(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object")
    body, total = len(data) - 8 - size, 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise NSRError(f"{path}: safetensors __metadata__ must map names to strings")
            continue
        total += _safetensors_entry_elements(name, entry, body, path)
    check_tensor_elements(total, str(path))
    return header


def _sizes(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)


def _safetensors_entry_elements(name: str, entry: object, body: int, path: Path) -> int:
    """Elements of one safetensors tensor entry, refused unless its dtype, shape and offsets agree."""
    where = f"{path}: tensor {name[:80]!r}"
    if not isinstance(entry, dict):
        raise NSRError(f"{where}: its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        raise NSRError(f"{where}: unknown dtype {dtype!r:.20}")
    if not _sizes(shape) or len(shape) > 8:
        raise NSRError(f"{where}: shape must be a list of at most 8 sizes, got {shape!r:.60}")
    if not _sizes(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= body:
        raise NSRError(f"{where}: data offsets {offsets!r:.60} lie outside the file's {body:,} data bytes")
    elements = math.prod(shape)
    if elements * SAFETENSORS_DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise NSRError(f"{where}: shape {shape} of {dtype} does not fill its {offsets[1] - offsets[0]:,} bytes")
    return elements


def _path_exists(path: Path) -> bool:
    """``Path.exists`` that says "permission denied" in one line instead of raising."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        raise NSRError(f"{path}: permission denied (this user cannot reach it)") from None
    except OSError as e:
        raise NSRError(f"{path}: cannot read it ({e.strerror or e})") from None
    return True


def _load_native(path: Path, image_mean: float | None, patch_size: int | None) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    st = path.with_suffix(".safetensors")
    js = path.with_suffix(".json")
    if not _path_exists(st):
        raise NSRError(f"{st}: weights file not found")
    data = _read_file(st, "safetensors weights file")
    header = _safetensors_header(data, st)
    if _path_exists(js):
        doc, where = read_json(js), str(js)
    else:
        embedded = header.get("__metadata__", {}).get("nsr_deploy", "{}")
        doc, where = parse_json(embedded, f"{st} (metadata)"), str(st)
    cfg = native_config(doc, where)  # checked before any weight is read
    try:
        sd = checked_tensors(load_safetensors(data), str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise NSRError(f"{st}: unreadable native model ({str(e).splitlines()[0][:160]})") from None
    check_finite(sd, str(st))
    overrides = {}
    if image_mean is not None:
        overrides["image_mean"] = image_mean
    if patch_size is not None:
        overrides["patch_size"] = patch_size
    cfg = cfg.replace(**overrides)
    net = build_net(cfg, {k: v.float() for k, v in sd.items()}, str(st))
    meta = dict(doc.get("meta") or {})
    return LoadedModel(net, str(st), "native", sha256_bytes(data), meta.get("name", path.stem), meta)


# ---------------------------------------------------------------------------------------------
# entry point


def load_model(spec: str | Path, image_mean: float | None = None, patch_size: int | None = None) -> LoadedModel:
    """A bundled model name, a native model (.safetensors/.json), or a reference checkpoint."""
    from nsr_deploy.assets import bundled_path

    path = Path(spec)
    if not _path_exists(path):
        bundled = bundled_path(str(spec))
        if bundled is None:
            raise NSRError(f"{spec}: no such file (and no bundled model of that name)")
        return _load_native(bundled, image_mean, patch_size)
    if path.is_dir():
        raise NSRError(f"{path}: is a directory, expected a checkpoint file")
    if path.suffix in (".safetensors", ".json"):
        return _load_native(path, image_mean, patch_size)
    obj, data = _read_torch_file(path)
    sd = fold_state_dict(_state_dict_of(obj, path))
    check_finite(sd, str(path))
    cfg = infer_config(sd, 0.5 if image_mean is None else image_mean, 48 if patch_size is None else patch_size)
    net = build_net(cfg, sd, str(path))
    name = re.sub(r"\W+", "-", path.stem).strip("-") or "model"
    return LoadedModel(net, str(path), "reference", sha256_bytes(data), name)


def save_reference_checkpoint(net: NSRNet, path: str | Path, epoch: int = 0) -> None:
    """A file in the reference trainer's layout (for tests, and for users moving back)."""
    sd = net.state_dict()
    if not net.body[0].weight_norm:
        sd = unfold_weight_norm(sd)
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}, "lr_scheduler_state_dict": {},
                "epoch": epoch}, path)


def unfold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folded weights back to ``weight_g``/``weight_v`` (g = ||w||, v = w)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".weight") and value.dim() == 4:
            prefix = key[: -len(".weight")]
            out[prefix + ".weight_g"] = value.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clone()
            out[prefix + ".weight_v"] = value.clone()
        else:
            out[key] = value
    return out
