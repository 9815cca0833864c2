"""An export folder as a verified contract: ``nsr.json`` checked against a schema, the files it names
confined to the folder, their sha256 checked at load, and the engine's output checked against the
scale and channels the manifest promises. Torch-free (the runtimes use it).

Anything that does not hold is one ``NSRError`` naming the file and the field.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import MAX_ENGINE_BYTES, read_regular, sha256_bytes

SHA256_PATTERN = "^[0-9a-f]{64}$"  # as nsr.schema.json writes it
SHA256 = re.compile(SHA256_PATTERN.strip("^$"))
# fields of one target entry that name a file in the folder, and the sha256 recorded for each
TARGET_FILES = (("file", "sha256"), ("weights", "weights_sha256"))
# engine files whose weights live in a second file beside them (OpenVINO .xml + .bin, ncnn .param + .bin)
WEIGHTS_SUFFIXES = (".xml", ".param")


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


@functools.lru_cache(maxsize=1)
def _schema_validator():
    """The validator of ``nsr.schema.json``, built once. jsonschema is imported here, not at module
    import: loading the runtimes stays cheap. An integer is an int (not 2.0, not true)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    ints = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    schema = json.loads(resources.files("nsr_deploy.runtimes").joinpath("nsr.schema.json").read_text())
    return jsonschema.validators.extend(base, type_checker=ints)(schema)


def _field_path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "(the top level)"


def _schema_error_line(error) -> str:
    """One short line for a schema violation: the field path and what it must be (never the whole value)."""
    path, value, rule, got = list(error.absolute_path), error.validator_value, error.validator, error.instance
    if rule == "required":
        missing = [k for k in value if k not in got]
        return f"{_field_path([*path, missing[0] if missing else '?'])} is missing (required)"
    if rule == "dependentRequired":
        key = next((k for k, needs in value.items() if k in got and any(n not in got for n in needs)), "?")
        need = next((n for n in value.get(key, ()) if n not in got), "?")
        return f"{_field_path([*path, need])} is missing (required with {key})"
    field = _field_path(path)
    shown = f"{json.dumps(got)[:40]}" if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
    if rule == "type":
        return f"{field} must be of type {value}, got {shown}"
    if rule in ("enum", "const"):
        allowed = ", ".join(json.dumps(v) for v in (value if rule == "enum" else [value]))
        return f"{field} must be {'one of ' if rule == 'enum' else ''}{allowed:.120}, got {shown}"
    if rule == "pattern" and value == SHA256_PATTERN:
        return f"{field} is not a sha256 hex digest (64 lowercase hex digits), got {shown}"
    if rule == "pattern" and "(?!/)" in value:  # the relative_file pattern: a name inside the folder
        return f"{field} names the file {shown}, outside its folder; refused"
    if rule == "pattern":
        return f"{field}: {shown} does not match the pattern {value}"
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
                "minProperties", "minLength"):
        return f"{field}: {shown} breaks the schema's {rule} {json.dumps(value)[:60]}"
    if rule == "additionalProperties":
        return f"{field}: unknown field(s) ({' '.join(error.message.split())[:120]})"
    return f"{field}: {' '.join(error.message.split())[:160]}"


def schema_checked(doc: object, where: str) -> None:
    """``doc`` against ``nsr.schema.json``; the first violation (the most relevant one) as one ``NSRError``."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_schema_validator().iter_errors(doc))
    if error is not None:
        raise NSRError(f"{where}: does not follow nsr.schema.json: {_schema_error_line(error)} (re-export it)")


def validate_manifest(doc: object, where: str) -> dict:
    """``nsr.json`` of an export folder: the schema first, then what a schema cannot say (config bounds,
    scale and channels agreeing between sections)."""
    schema_checked(doc, where)
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
    if not path.exists():
        raise NSRError(f"{where}: {name} is missing from the folder")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineFiles:
    """An engine file and its weights file (OpenVINO's and ncnn's ``.bin``), each read once: the bytes
    that were hashed are the bytes the runtime loads, so a file swapped after the check never runs."""

    path: Path
    engine: bytes
    weights: bytes | None = None
    weights_path: Path | None = None
    batch_one: bytes | None = None  # the batch-1 twin of a fixed-batch file (targets.<t>.batch_one)


def _read_engine_file(path: Path) -> bytes:
    return read_regular(path, MAX_ENGINE_BYTES, "model file")


def companion_of(path: Path) -> Path | None:
    """The weights file a bare engine file is loaded with (``model.xml`` -> ``model.bin``), or None."""
    return path.with_suffix(".bin") if path.suffix in WEIGHTS_SUFFIXES else None


def read_engine_files(path: str | Path) -> EngineFiles:
    """A bare engine file (no ``nsr.json``: no recorded hash) and its weights file, read once."""
    path = Path(path)
    engine = _read_engine_file(path)
    weights = companion_of(path)
    if weights is not None and not weights.exists():
        raise NSRError(f"{path}: its weights file {weights.name} is missing")
    return EngineFiles(path, engine, weights and _read_engine_file(weights), weights)


def verified_files(folder: Path, entry: dict, where: str) -> EngineFiles:
    """The engine file of a target entry and its weights file: confined to the folder, read once, and
    their bytes checked against the sha256 the entry records (required, for every file the runtime reads)."""
    read: dict[str, tuple[Path, bytes]] = {}
    for file_key, sha_key in TARGET_FILES:
        name = entry.get(file_key)
        if name is None:
            if file_key == "weights" and Path(str(entry.get("file"))).suffix in WEIGHTS_SUFFIXES:
                raise NSRError(f"{where}: names no weights file for {entry.get('file')}: the weights the runtime "
                               f"reads must be named and hashed; refusing to run it (re-export)")
            continue
        if read:  # companions (OpenVINO's .bin) sit beside the engine file, wherever it moved
            name = str(Path(entry["file"]).parent / name)
        expected = entry.get(sha_key)
        if not (isinstance(expected, str) and SHA256.fullmatch(expected)):
            raise NSRError(f"{where}: records no valid {sha_key} for {name}; every file an engine reads must "
                           f"be hashed (re-export to get a complete manifest)")
        read[file_key] = _verified(folder, name, expected, where)
    main_path, main = read["file"]
    weights_path, weights = read.get("weights", (None, None))
    single = entry.get("batch_one")  # schema-checked: a file name and its sha256
    batch_one = _verified(folder, single["file"], single["sha256"], where)[1] if single else None
    return EngineFiles(main_path, main, weights, weights_path, batch_one)


def _verified(folder: Path, name: str, expected: str, where: str) -> tuple[Path, bytes]:
    """``folder/name`` (confined) and its bytes, read once and checked against the sha256 ``expected``."""
    path = confined_file(folder, name, where)
    data = _read_engine_file(path)
    if sha256_bytes(data) != expected:
        raise NSRError(f"{path}: its sha256 differs from the one {where} records: the file was changed or "
                       f"swapped after export; refusing to run it (re-export to trust it)")
    return path, data


def check_engine_output(y: np.ndarray, x_shape: tuple, cfg: NSRConfig, engine: str) -> None:
    """The engine must give what the manifest says: C channels, each side times the scale."""
    n, _, h, w = x_shape
    want = (n, cfg.channels, h * cfg.scale, w * cfg.scale)
    if tuple(y.shape) != want:
        raise NSRError(f"{engine}: gives output {list(y.shape)} for input {list(x_shape)}, but its manifest "
                       f"promises {list(want)} (scale {cfg.scale}, {cfg.channels} channel(s)); "
                       f"engine and manifest disagree")
