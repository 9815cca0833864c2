"""The native model description (``NAME.json``, also in the ``.safetensors`` metadata), checked field
by field before any weight is read: a wrongly typed or oversized field is one error line, not a traceback
or an allocation."""

from __future__ import annotations

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError

NATIVE_FORMAT = "nsr-deploy/1"


def native_config(doc: object, where: str) -> NSRConfig:
    if not isinstance(doc, dict):
        raise NSRError(f"{where}: not an nsr-deploy model description (a JSON {type(doc).__name__}, not an object)")
    if doc.get("format") != NATIVE_FORMAT or "config" not in doc:
        raise NSRError(f"{where}: not an nsr-deploy model description (format {doc.get('format')!r:.40})")
    meta = doc.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise NSRError(f"{where}: meta must be an object, got {type(meta).__name__}")
    if isinstance(meta, dict) and not isinstance(meta.get("name", ""), str):
        raise NSRError(f"{where}: meta.name must be a string")
    try:
        return NSRConfig.from_dict(doc["config"])
    except NSRError as e:
        raise NSRError(f"{where}: config: {e}") from None
