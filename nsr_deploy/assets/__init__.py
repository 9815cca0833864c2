"""Bundled default models (trained by ``tools/train_default.py``): ``NAME.safetensors`` + ``NAME.json``."""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL = "sr-x2"


def bundled_names() -> list[str]:
    return sorted(p.stem for p in ASSETS.glob("*.json") if p.with_suffix(".safetensors").exists())


def bundled_path(name: str) -> Path | None:
    path = ASSETS / f"{name}.json"
    return path if name in bundled_names() else None


def bundled_description(name: str) -> dict:
    return json.loads((ASSETS / f"{name}.json").read_text())


def sample_paths() -> list[Path]:
    """Bundled sample photos (crops of held-out training photos; see tools/make_samples.py)."""
    return sorted((ASSETS / "samples").glob("*.png"))
