import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NSR_DATA", ROOT.parent / "shared" / "data"))


def data_image(folder: str, index: int = 0) -> np.ndarray:
    paths = sorted((DATA / folder).iterdir())
    return np.asarray(Image.open(paths[index]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test images missing: {DATA} (set NSR_DATA)")
    return DATA
