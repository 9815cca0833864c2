"""``nsr.json``: the I/O contract written next to every exported engine (read here without torch)."""

from __future__ import annotations

import json
from pathlib import Path

from nsr_deploy.config import NSRConfig
from nsr_deploy.errors import NSRError

MANIFEST = "nsr.json"
MANIFEST_FORMAT = "nsr-deploy/manifest-1"


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise NSRError(f"{folder}: no {MANIFEST} (not an nsr-deploy export folder)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise NSRError(f"{path}: not valid JSON ({e})") from None
    if doc.get("format") != MANIFEST_FORMAT:
        raise NSRError(f"{path}: unknown manifest format {doc.get('format')!r}")
    return doc


def manifest_config(doc: dict) -> NSRConfig:
    return NSRConfig.from_dict(doc["model"]["config"])


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
