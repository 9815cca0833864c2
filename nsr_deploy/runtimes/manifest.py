"""``nsr.json``: the I/O contract written next to every exported engine (read here without torch)."""

from __future__ import annotations

import json
import os
import re
from html import unescape
from pathlib import Path

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.core.safe_read import parse_json, read_json
from nsr_deploy.runtimes.contract import manifest_config_checked, validate_manifest

MANIFEST = "nsr.json"
MANIFEST_FORMAT = "nsr-deploy/manifest-1"


def read_manifest(folder: str | Path) -> dict:
    """``folder/nsr.json``: a regular file, capped, bounded nesting and integers, then the schema."""
    path = Path(folder) / MANIFEST
    try:
        os.stat(path)  # not Path.exists(): it raises PermissionError from a folder this user cannot enter
    except PermissionError:
        raise NSRError(f"{folder}: permission denied (this user cannot open the export folder)") from None
    except OSError:
        raise NSRError(f"{folder}: no {MANIFEST} (not an nsr-deploy export folder)") from None
    doc = read_json(path, "manifest")
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        said = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise NSRError(f"{path}: unknown manifest format {said!r:.60}")
    return validate_manifest(doc, str(path))


def manifest_config(doc: dict, where: str = MANIFEST) -> NSRConfig:
    return manifest_config_checked(doc, where)


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


# -- the manifest embedded in the (hashed) engine file -------------------------------------------
# What shapes the output in every embedded manifest: the model, its pixel semantics, the contract.
SHARED_FIELDS = (("format",), ("contract_version",), ("model", "kind"), ("model", "config"), ("semantics",))
# an engine's own facts in its embedded targets entry (file names may move, as in a Triton repository)
OWN_ENTRY_FIELDS = ("precision", "conv_form", "static_batch", "runtime")
ONNX_METADATA_PROPS = 14  # ModelProto.metadata_props: StringStringEntryProto {key = 1, value = 2}
IR_MANIFEST = re.compile(r"<nsr_deploy>(.*?)</nsr_deploy>", re.S)
IR_MANIFEST_VALUE = re.compile(r"<manifest\s+value=\"([^\"]*)\"")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _protobuf_fields(data: memoryview):
    """(field number, bytes) of the length-delimited fields of one protobuf message; the others skipped."""
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1 or wire == 5:
            i += 8 if wire == 1 else 4
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError("truncated field")
            yield tag >> 3, data[i:i + size]
            i += size
        else:
            raise ValueError(f"wire type {wire}")
    if i != len(data):
        raise ValueError("truncated field")


def onnx_metadata(data: bytes, where: str) -> dict[str, list[str]]:
    """An ONNX model's metadata props (key -> every value given) from its bytes: a plain protobuf scan,
    so neither ``onnx`` nor a session is needed, and a key given twice is seen (not silently the last)."""
    props: dict[str, list[str]] = {}
    try:
        for number, body in _protobuf_fields(memoryview(data)):  # views: the graph's weights are not copied
            if number != ONNX_METADATA_PROPS:
                continue
            entry = dict(_protobuf_fields(body))
            key, value = bytes(entry.get(1, b"")).decode("utf-8"), bytes(entry.get(2, b"")).decode("utf-8")
            props.setdefault(key, []).append(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise NSRError(f"{where}: not a readable ONNX model ({e})") from None
    return props


def embedded_manifest_text(name: str, data: bytes, where: str) -> str | None:
    """The JSON text of the manifest an engine file carries (ONNX metadata ``nsr_manifest``, an IR's
    rt_info ``nsr_deploy/manifest``), None for files that carry none (ncnn, ExecuTorch, TensorRT)."""
    if name.endswith(".onnx"):
        values = onnx_metadata(data, where).get("nsr_manifest", [])
    elif name.endswith(".xml"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NSRError(f"{where}: not UTF-8 XML ({e.reason} at byte {e.start})") from None
        values = [unescape(v) for block in IR_MANIFEST.findall(text) for v in IR_MANIFEST_VALUE.findall(block)]
    else:
        return None
    if len(values) > 1:
        raise NSRError(f"{where}: carries {len(values)} embedded manifests; refusing an ambiguous model file")
    if not values:
        raise NSRError(f"{where}: carries no embedded manifest to check {MANIFEST} against; re-export it")
    return values[0]


def embedded_manifest(name: str, data: bytes, where: str) -> dict | None:
    text = embedded_manifest_text(name, data, where)
    if text is None:
        return None
    doc = parse_json(text, f"{where}: its embedded manifest")
    if not isinstance(doc, dict):
        raise NSRError(f"{where}: its embedded manifest is a JSON {type(doc).__name__}, not an object")
    return doc


def _at(doc: dict, path: tuple) -> object:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _same(a: object, b: object) -> bool:
    """Equal as JSON, types included (2 is not 2.0, not true)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _tensor_facts(io: object) -> object:
    """An ``io`` section without what depends on the engine's batch (its fixed size, the batch axis)."""
    if not isinstance(io, dict):
        return io
    tensors = [{**t, "shape": t.get("shape", [])[1:]} if isinstance(t, dict) and isinstance(t.get("shape"), list)
               else t for t in [*io.get("inputs", []), *io.get("outputs", [])]]
    return {"layout": io.get("layout"), "tensors": tensors}


def _first_difference(field: str, said: object, embedded: object) -> tuple[str, object, object]:
    """The deepest field where two JSON values part (``semantics.tiling.reference.stride``)."""
    while isinstance(said, dict) and isinstance(embedded, dict):
        key = next((k for k in sorted({*said, *embedded}, key=str)
                    if k not in said or k not in embedded or not _same(said[k], embedded[k])), None)
        if key is None or key not in said or key not in embedded:
            return (f"{field}.{key}" if key is not None else field), said.get(key), embedded.get(key)
        field, said, embedded = f"{field}.{key}", said[key], embedded[key]
    return field, said, embedded


def _disagreements(doc: dict, target: str, own: dict) -> list[tuple[str, object, object]]:
    """(field, what nsr.json says, what the engine file says) for every output-shaping field."""
    entry = doc["targets"][target]
    pairs = [(".".join(path), _at(doc, path), _at(own, path)) for path in SHARED_FIELDS]
    own_entry = _at(own, ("targets", target))
    if isinstance(own_entry, dict):
        pairs += [(f"targets.{target}.{key}", entry.get(key), own_entry[key])
                  for key in OWN_ENTRY_FIELDS if key in own_entry]
    pairs += [(f"targets.{target}.conv_form", entry.get("conv_form", doc.get("conv_form")), own.get("conv_form")),
              (f"targets.{target}.static_batch", entry.get("static_batch"), _at(own, ("io", "static_batch"))),
              ("io", _tensor_facts(doc.get("io")), _tensor_facts(own.get("io")))]
    if target == "onnx":  # the top-level io and conv_form describe model.onnx itself
        pairs += [("io", doc.get("io"), own.get("io")), ("conv_form", doc.get("conv_form"), own.get("conv_form"))]
    return [(field, said, embedded) for field, said, embedded in pairs if not _same(said, embedded)]


def _shared_only(doc: dict, own: dict) -> list[tuple[str, object, object]]:
    pairs = [(".".join(path), _at(doc, path), _at(own, path)) for path in SHARED_FIELDS]
    return [(field, said, embedded) for field, said, embedded in pairs if not _same(said, embedded)]


def check_embedded(doc: dict, target: str, files: dict[str, bytes], where: str) -> None:
    """``nsr.json`` (``doc``, already validated) against the manifest embedded in the verified bytes of
    target ``target``'s files (``files``: name as the entry writes it -> bytes). The hashed file rules:
    any output-shaping field that disagrees (model config, semantics and tiling, io, conv form, batch,
    precision) is one ``NSRError`` naming the first such field.

    Engines that carry no manifest (ncnn ``.param``, ExecuTorch ``.pte``, TensorRT ``.engine``) are
    checked on the shared fields against the ONNX model they were lowered from, when the caller passes
    its verified bytes too (under ``targets.onnx.file``); without it only ``nsr.json`` describes them."""
    entry = doc["targets"][target]
    name = entry["file"]
    file_where = f"{where}: targets.{target}: {name}"
    own = embedded_manifest(name, files[name], file_where) if name in files else None
    if own is not None:
        wrong = _disagreements(doc, target, own)
    else:
        onnx_name = _at(doc, ("targets", "onnx", "file"))
        if not (isinstance(onnx_name, str) and onnx_name in files) or onnx_name == name:
            return
        file_where = f"{where}: targets.onnx: {onnx_name}"
        wrong = _shared_only(doc, embedded_manifest(onnx_name, files[onnx_name], file_where))
    if wrong:
        field, said, embedded = _first_difference(*wrong[0])
        raise NSRError(f"{where}: {field} is {json.dumps(said)[:60]} but the manifest embedded in the verified "
                       f"{Path(file_where.rsplit(': ', 1)[-1]).name} says {json.dumps(embedded)[:60]}: "
                       f"{MANIFEST} was edited after export; refusing to run it (re-export)")
