"""``nsr.json``: the I/O contract written next to every exported engine (read here without torch)."""

from __future__ import annotations

import json
from pathlib import Path

from nsr_deploy.budgets import read_small_text
from nsr_deploy.config import NSRConfig
from nsr_deploy.errors import NSRError
from nsr_deploy.runtimes.contract import manifest_config_checked, validate_manifest

MANIFEST = "nsr.json"
MANIFEST_FORMAT = "nsr-deploy/manifest-1"


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise NSRError(f"{folder}: no {MANIFEST} (not an nsr-deploy export folder)")
    try:
        doc = json.loads(read_small_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NSRError(f"{path}: not valid JSON ({str(e)[:120]})") from None
    except OSError as e:
        raise NSRError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        said = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise NSRError(f"{path}: unknown manifest format {said!r:.60}")
    return validate_manifest(doc, str(path))


def manifest_config(doc: dict, where: str = MANIFEST) -> NSRConfig:
    return manifest_config_checked(doc, where)


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
