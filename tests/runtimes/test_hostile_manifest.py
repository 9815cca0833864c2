"""nsr.json as a contract: validated against nsr.schema.json before anything reads it (every file hash
required), bounded as JSON, and held to the manifest embedded in the hashed model file."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_error, invoke

from conftest import decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.runtimes import load

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4, patch_size=24)
IMAGE = np.random.default_rng(2).integers(0, 256, (100, 98, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    loaded = LoadedModel(decisive_net(TINY, 0), "m", "built", "0" * 64, "m")
    export(loaded, root / "exp", "onnx", ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    return root / "exp"


def _edited(folder: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "exp"
    shutil.copytree(folder, out)
    doc = json.loads((out / "nsr.json").read_text())
    edit(doc)
    (out / "nsr.json").write_text(json.dumps(doc))
    return out


def _ref(doc):
    return doc["semantics"]["tiling"]["reference"]


SCHEMA_CASES = {
    "layout_nhwc": (lambda d: d["io"].update(layout="NHWC"), "io.layout"),
    "unknown_conv_form": (lambda d: d.update(conv_form="sparse-magic"), "conv_form"),
    "contract_99": (lambda d: d.update(contract_version=99), "contract_version"),
    "no_io": (lambda d: d.pop("io"), "io"),
    "no_semantics": (lambda d: d.pop("semantics"), "semantics"),
    "stride_0": (lambda d: _ref(d).update(stride=0), "stride"),
    "patch_big": (lambda d: _ref(d).update(patch="big"), "patch"),
    "sha_null": (lambda d: d["targets"]["onnx"].update(sha256=None), "sha256"),
    "sha_missing": (lambda d: d["targets"]["onnx"].pop("sha256"), "sha256"),
    "weights_unhashed": (lambda d: d["targets"]["onnx"].update(weights="model.onnx"), "weights_sha256"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_the_schema_is_enforced_before_anything_reads_the_manifest(folder, tmp_path, case):
    edit, field = SCHEMA_CASES[case]
    out = _edited(folder, tmp_path, edit)
    with pytest.raises(NSRError, match=field):
        load(out)


EMBEDDED_CASES = {
    "patch_size": lambda d: d["model"]["config"].update(patch_size=32),
    "sparse": lambda d: d["model"]["config"].update(sparse=False),
    "image_mean": lambda d: d["semantics"].update(image_mean=0.25),
    "tiling_stride": lambda d: _ref(d).update(stride=_ref(d)["stride"] - 1),
    "strip_weight": lambda d: _ref(d).update(strip_weight=0.5),
    "static_batch": lambda d: d["targets"]["onnx"].update(static_batch=2),
}


@pytest.mark.parametrize("case", list(EMBEDDED_CASES))
def test_an_edited_output_shaping_field_disagrees_with_the_hashed_model(folder, tmp_path, case):
    out = _edited(folder, tmp_path, EMBEDDED_CASES[case])
    says = "a dense model has" if case == "sparse" else "embedded in the verified"  # refused earlier, by the config
    with pytest.raises(NSRError, match=says), load(out) as engine:
        engine.restore(IMAGE)


@pytest.mark.parametrize("text,says", [("[" * 200_000 + "]" * 200_000, "nested deeper"),
                                       ('{"format": ' + "9" * 5000 + "}", "digits")])
def test_hostile_json_in_nsr_json_is_one_error_line(folder, tmp_path, text, says):
    out = tmp_path / "exp"
    shutil.copytree(folder, out)
    (out / "nsr.json").write_text(text)
    (tmp_path / "a.png").write_bytes(b"")  # never read: the model fails first
    res = invoke(["restore", "a.png", "-m", str(out), "-o", "o.png"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, says)


def test_an_export_folder_this_user_cannot_read_is_one_error_line(folder):
    """As root the load runs with the effective uid of nobody (root reads anything)."""
    parent = Path(tempfile.mkdtemp(prefix="nsr-perm-"))
    try:
        parent.chmod(0o755)
        locked = parent / "exp"
        shutil.copytree(folder, locked)
        locked.chmod(0)
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(65534)
        try:
            with pytest.raises(NSRError, match="permission denied"):
                load(locked)
        finally:
            if as_root:
                os.seteuid(0)
    finally:
        (parent / "exp").chmod(0o755)
        shutil.rmtree(parent)
