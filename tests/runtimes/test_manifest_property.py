"""The export folder as a contract, as a property: for random edits of ``nsr.json`` (any value anywhere
in its tree changed, retyped, removed, or a key added) and of the files it names (a byte flipped, cut
short, swapped for another model, replaced by a link or a FIFO), loading and restoring either is refused
with one ``NSRError`` or gives exactly the bytes the untouched folder gives. Nothing in between: no
other output, no other exception, no hang."""

import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.runtimes import load

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4, patch_size=24)
EXAMPLES = settings(max_examples=int(os.environ.get("NSR_FUZZ_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=list(HealthCheck))
# an image larger than the whole-image threshold (4 x patch 24): the tiling fields shape its output
IMAGE = np.random.default_rng(7).integers(0, 256, (100, 98, 3), dtype=np.uint8)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 5000), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3), st.just({}))


def _export(root: Path, name: str, seed: int) -> Path:
    loaded = LoadedModel(decisive_net(TINY, seed), name, "built", "0" * 64, name)
    export(loaded, root / name, "onnx", ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    return root / name


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("property")
    folder, other = _export(root, "base", 0), _export(root, "other", 1)
    return {"root": root, "folder": folder, "other": other, "want": _restored(folder)}


@contextmanager
def _deadline(seconds: int):
    """A FIFO or device must be refused, not waited on: a hang fails the example instead of the suite."""
    def fire(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _restored(folder: Path) -> np.ndarray:
    with _deadline(60), load(folder, backend="onnxruntime") as engine:
        return engine.restore(IMAGE)


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield prefix, doc
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, (*prefix, i))


def _edit(doc, path, how, value):
    if not path:
        return value if how == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    current = parent[last]
    if how == "delete":
        parent.pop(last) if isinstance(parent, dict) else parent.pop(last)
    elif how == "nudge" and isinstance(current, (int, float)) and not isinstance(current, bool):
        parent[last] = current + (1 if isinstance(current, int) else 0.5)
    elif how == "add_key" and isinstance(current, dict):
        current["extra"] = value
    else:
        parent[last] = value
    return doc


def _outcome_is_safe(folder: Path, want: np.ndarray) -> None:
    try:
        got = _restored(folder)
    except NSRError:
        return
    assert np.array_equal(got, want), "an edited folder loaded and restored other bytes"


@EXAMPLES
@given(data=st.data())
def test_any_edit_of_nsr_json_is_refused_or_changes_nothing(base, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("edit") / "exp"
    shutil.copytree(base["folder"], folder)
    doc = json.loads((folder / "nsr.json").read_text())
    paths = [p for p, _ in _paths(doc)]
    path = data.draw(st.sampled_from(paths))
    how = data.draw(st.sampled_from(["replace", "delete", "nudge", "add_key"]))
    doc = _edit(doc, path, how, data.draw(VALUES))
    (folder / "nsr.json").write_text(json.dumps(doc))
    _outcome_is_safe(folder, base["want"])


FILE_EDITS = ["flip", "truncate", "swap", "symlink_out", "symlink_in", "fifo", "empty", "append"]


@EXAMPLES
@given(how=st.sampled_from(FILE_EDITS), where=st.floats(0, 1), which=st.sampled_from(["model.onnx", "nsr.json"]))
def test_any_edit_of_the_folder_files_is_refused_or_changes_nothing(base, tmp_path_factory, how, where, which):
    folder = tmp_path_factory.mktemp("files") / "exp"
    shutil.copytree(base["folder"], folder)
    target = folder / which
    data = target.read_bytes()
    at = min(int(where * len(data)), len(data) - 1)
    target.unlink()
    if how == "flip":
        target.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    elif how == "truncate":
        target.write_bytes(data[:at])
    elif how == "swap":
        shutil.copy(base["other"] / which, target)
    elif how == "symlink_out":  # the same bytes, from outside the folder
        outside = folder.parent / f"outside-{which}"
        outside.write_bytes(data)
        target.symlink_to(outside)
    elif how == "symlink_in":
        (folder / f"copy-{which}").write_bytes(data)
        target.symlink_to(folder / f"copy-{which}")
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "empty":
        target.write_bytes(b"")
    else:
        target.write_bytes(data + b"\0" * 16)
    _outcome_is_safe(folder, base["want"])
