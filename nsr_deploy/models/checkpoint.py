"""Load models: reference-trainer checkpoints (``ychfan/pt_ir``) and our native safetensors format.

Reference checkpoints are ``torch.save`` files of the trainer's dict (``model_state_dict``, ...),
a bare state dict, or either with ``module.`` prefixes. Hyperparameters are not stored; they are
inferred from tensor shapes. Weight normalisation (``weight_g``/``weight_v``, or the newer
``parametrizations.weight.original0/1``) is folded into plain weights. Files are opened with
``torch.load(weights_only=True)``: pickled code is refused and never runs.

Native models: ``NAME.safetensors`` (folded weights, config also in its metadata) + ``NAME.json``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nsr_deploy.budgets import read_small_text
from nsr_deploy.config import KERNEL, SKIP_KERNEL, NSRConfig
from nsr_deploy.errors import NSRError
from nsr_deploy.models.conv import fold_weight_norm
from nsr_deploy.models.native_doc import NATIVE_FORMAT, native_config
from nsr_deploy.models.network import NSRNet
from nsr_deploy.models.tensor_checks import check_finite, checked_tensors
from nsr_deploy.runtimes.contract import sha256_of as sha256_file


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


def _read_torch_file(path: Path) -> object:
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = head.startswith(b"PK")
    is_legacy_pickle = head[:1] == b"\x80"
    if not (is_zip or is_legacy_pickle):
        raise NSRError(f"{path}: not a PyTorch checkpoint (no torch.save header)")
    if is_zip and not zipfile.is_zipfile(path):
        raise NSRError(f"{path}: truncated or corrupt checkpoint (incomplete zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise NSRError(
                f"{path}: refused: the checkpoint holds pickled objects beyond tensors "
                f"(possible code execution); nothing in it was run ({first[:160]})"
            ) from None
        raise NSRError(f"{path}: corrupt checkpoint ({first[:160]})") from None
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


def fold_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain ``weight`` for every conv, whichever weight-norm spelling the file used."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".weight_v") or key.endswith(".parametrizations.weight.original1"):
            continue
        if key.endswith(".weight_g"):
            prefix = key[: -len(".weight_g")]
            v = sd.get(prefix + ".weight_v")
            if v is None:
                raise NSRError(f"unknown checkpoint layout: {key} without {prefix}.weight_v")
            out[prefix + ".weight"] = _fold(key, value, v)
        elif key.endswith(".parametrizations.weight.original0"):
            prefix = key[: -len(".parametrizations.weight.original0")]
            v = sd.get(prefix + ".parametrizations.weight.original1")
            if v is None:
                raise NSRError(f"unknown checkpoint layout: {key} without its original1")
            out[prefix + ".weight"] = _fold(key, value, v)
        else:
            out[key] = value
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


def _load_native(path: Path, image_mean: float | None, patch_size: int | None) -> LoadedModel:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    st = path.with_suffix(".safetensors")
    js = path.with_suffix(".json")
    if not st.exists():
        raise NSRError(f"{st}: weights file not found")
    try:
        if js.exists():
            doc = json.loads(read_small_text(js))
        else:
            with safe_open(str(st), "pt") as f:
                doc = json.loads((f.metadata() or {}).get("nsr_deploy", "{}"))
        cfg = native_config(doc, str(js))  # checked before any weight is read
        sd = checked_tensors(load_file(str(st)), str(st))
    except (SafetensorError, json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
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
    return LoadedModel(net, str(st), "native", sha256_file(st), meta.get("name", path.stem), meta)


# ---------------------------------------------------------------------------------------------
# entry point


def load_model(spec: str | Path, image_mean: float | None = None, patch_size: int | None = None) -> LoadedModel:
    """A bundled model name, a native model (.safetensors/.json), or a reference checkpoint."""
    from nsr_deploy.assets import bundled_path

    path = Path(spec)
    if not path.exists():
        bundled = bundled_path(str(spec))
        if bundled is None:
            raise NSRError(f"{spec}: no such file (and no bundled model of that name)")
        return _load_native(bundled, image_mean, patch_size)
    if path.is_dir():
        raise NSRError(f"{path}: is a directory, expected a checkpoint file")
    if path.suffix in (".safetensors", ".json"):
        return _load_native(path, image_mean, patch_size)
    obj = _read_torch_file(path)
    sd = fold_state_dict(_state_dict_of(obj, path))
    check_finite(sd, str(path))
    cfg = infer_config(sd, 0.5 if image_mean is None else image_mean, 48 if patch_size is None else patch_size)
    net = build_net(cfg, sd, str(path))
    name = re.sub(r"\W+", "-", path.stem).strip("-") or "model"
    return LoadedModel(net, str(path), "reference", sha256_file(path), name)


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
