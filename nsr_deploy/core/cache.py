"""nsr-deploy's cache folder (what a machine learns about an export once: ONNX Runtime's blocked model,
``auto``'s measured choice) and the one way files are written there: a temp name, then a rename.

``$NSR_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/nsr-deploy``, else ``~/.cache/nsr-deploy``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_ENV = "NSR_DEPLOY_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nsr-deploy"


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` at ``path``, all or nothing: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
