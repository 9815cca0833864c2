"""An export folder as a verified contract: ``nsr.json`` checked against a schema, the files it names
confined to the folder, their sha256 checked at load, and the engine's output checked against the
scale and channels the manifest promises. Torch-free (the runtimes use it).

Anything that does not hold is one ``NSRError`` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from nsr_deploy.config import NSRConfig
from nsr_deploy.errors import NSRError

SHA256 = re.compile(r"[0-9a-f]{64}")
# fields of one target entry that name a file in the folder, and the sha256 recorded for each
TARGET_FILES = (("file", "sha256"), ("weights", "weights_sha256"))


def _need(doc: dict, key: str, kind: type, where: str, optional: bool = False):
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        got = "nothing" if value is None else type(value).__name__
        raise NSRError(f"{where}: {key} must be {'an object' if kind is dict else kind.__name__}, got {got}")
    return value


def manifest_config_checked(doc: object, where: str) -> NSRConfig:
    """The model configuration of a manifest (``nsr.json`` or one embedded in an engine), every field checked."""
    if not isinstance(doc, dict):
        raise NSRError(f"{where}: the manifest is a JSON {type(doc).__name__}, not an object")
    model = _need(doc, "model", dict, where)
    config = _need(model, "config", dict, f"{where}: model")
    try:
        cfg = NSRConfig.from_dict(config)
    except NSRError as e:
        raise NSRError(f"{where}: model.config: {e}") from None
    semantics = doc.get("semantics")
    if semantics is not None:
        if not isinstance(semantics, dict):
            raise NSRError(f"{where}: semantics must be an object")
        for key, have in (("scale", cfg.scale), ("channels", cfg.channels)):
            said = semantics.get(key, have)
            if said != have or isinstance(said, bool):
                raise NSRError(f"{where}: semantics.{key} is {said!r:.20} but model.config says {have}")
    io = doc.get("io")
    if io is not None:
        if not isinstance(io, dict):
            raise NSRError(f"{where}: io must be an object")
        batch = io.get("static_batch")
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 4096):
            raise NSRError(f"{where}: io.static_batch must be null or 1..4096, got {batch!r:.20}")
    return cfg


def validate_manifest(doc: object, where: str) -> dict:
    """``nsr.json`` of an export folder: schema, types and ranges."""
    cfg_where = where
    manifest_config_checked(doc, cfg_where)
    targets = _need(doc, "targets", dict, where)
    for name, entry in targets.items():
        here = f"{where}: targets.{name}"
        if not isinstance(entry, dict):
            raise NSRError(f"{here} must be an object")
        for file_key, sha_key in TARGET_FILES:
            optional = file_key != "file"
            if _need(entry, file_key, str, here, optional) is None:
                continue
            sha = entry.get(sha_key)
            if sha is not None and not (isinstance(sha, str) and SHA256.fullmatch(sha)):
                raise NSRError(f"{here}: {sha_key} is not a sha256 hex digest")
        batch = entry.get("static_batch")
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 4096):
            raise NSRError(f"{here}: static_batch must be null or 1..4096, got {batch!r:.20}")
    return doc


def confined_file(folder: Path, name: str, where: str) -> Path:
    """``folder/name``, refused unless it is a plain relative name that stays inside ``folder``."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\0" in name:
        raise NSRError(f"{where}: names the file {name!r:.80}, outside its folder; refused")
    path = folder / rel
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise NSRError(f"{where}: {name} leads outside its folder (a symbolic link?); refused")
    if not path.is_file():
        raise NSRError(f"{where}: {name} is missing from the folder")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_files(folder: Path, entry: dict, where: str) -> Path:
    """The engine file of a target entry (and its weights file), confined and sha256-checked."""
    main = None
    for file_key, sha_key in TARGET_FILES:
        name = entry.get(file_key)
        if name is None:
            continue
        if main is not None:  # companions (OpenVINO's .bin) sit beside the engine file, wherever it moved
            name = str(Path(entry["file"]).parent / name)
        path = confined_file(folder, name, where)
        main = main or path
        expected = entry.get(sha_key)
        if expected is not None and sha256_of(path) != expected:
            raise NSRError(f"{path}: its sha256 differs from the one {where} records: the file was changed or "
                           f"swapped after export; refusing to run it (re-export to trust it)")
    return main


def check_engine_output(y: np.ndarray, x_shape: tuple, cfg: NSRConfig, engine: str) -> None:
    """The engine must give what the manifest says: C channels, each side times the scale."""
    n, _, h, w = x_shape
    want = (n, cfg.channels, h * cfg.scale, w * cfg.scale)
    if tuple(y.shape) != want:
        raise NSRError(f"{engine}: gives output {list(y.shape)} for input {list(x_shape)}, but its manifest "
                       f"promises {list(want)} (scale {cfg.scale}, {cfg.channels} channel(s)); "
                       f"engine and manifest disagree")
