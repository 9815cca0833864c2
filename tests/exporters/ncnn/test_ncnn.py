"""ncnn target: pnnx conversion at fp32 / fp16 with their gates, the ncnn runner behind the common
interface (one patch per extractor call), and ``restore --backend ncnn`` against the PyTorch reference
on CSet5 / CSet14 photos with both tilings, for a tiny NSR model and the bundled sr-x2."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DEVICE_PHOTOS, DEVICE_TINY, agreement, device_options
from conftest import photo_rgb as photo
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import load_model
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.engine import Engine, to_uint8
from nsr_deploy.runtimes.manifest import read_manifest
from nsr_deploy.runtimes.torch.runner import TorchRunner

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

TINY = DEVICE_TINY
PHOTOS = DEVICE_PHOTOS
TILINGS = ("reference", "cells")


def options(precision: str = "fp32") -> ExportOptions:
    return device_options("ncnn", precision)  # grouped, patch batch 4, one thread


@pytest.fixture(scope="module")
def tiny(device_exports):
    return device_exports.loaded  # the model the shared exports were made from


@pytest.fixture(scope="module")
def built(device_exports):
    """precision -> DEVICE_TINY's ncnn export (shared with tests/test_conformance.py)."""
    return {precision: device_exports("ncnn", precision) for precision in ("fp32", "fp16")}


def test_fp32_export_passes_its_gate_and_states_what_was_verified(built):
    folder = built["fp32"]
    manifest = read_manifest(folder)
    entry = manifest["targets"]["ncnn"]
    assert (folder / entry["file"]).is_file() and (folder / entry["weights"]).is_file()
    assert entry["file"] == "model.ncnn.param" and entry["weights"] == "model.ncnn.bin"
    assert entry["static_batch"] is None and entry["conv_form"] == "grouped"
    assert entry["layers"]["Convolution"] >= TINY.num_blocks * 2  # the runtime-weight convs stay convs
    places = manifest["runs_on"]["ncnn"]
    assert any("x86-64" in p["where"] for p in places["verified"]) and "use_fp16_storage" in entry["app_settings"]
    assert any("ARM64" in p["where"] and p["by"].startswith("tests/runtimes/test_arm64") for p in places["verified"])
    parity = manifest["parity"]["ncnn/fp32"]
    assert parity["passed"] and {c["check"] for c in parity["checks"]} == {"random_patches", "real_image"}
    assert all(c["max_abs"] <= 1e-4 for c in parity["checks"])
    assert manifest["tools"]["pnnx"] and manifest["tools"]["ncnn"]


def constant_weights(param) -> int:
    """Weights of the layers with constant weights (Convolution key 6, InnerProduct key 2; one input)."""
    key = {"Convolution": "6", "InnerProduct": "2"}
    total = 0
    for line in param.read_text().splitlines()[2:]:
        fields = line.split()
        if fields and fields[0] in key and fields[2] == "1":
            total += int(dict(f.split("=", 1) for f in fields[6:] if "=" in f)[key[fields[0]]])
    return total


def test_fp16_stores_half_weights_and_passes_the_fp16_judge(built):
    fp32, fp16 = (read_manifest(built[p]) for p in ("fp32", "fp16"))
    size32, size16 = ((built[p] / "model.ncnn.bin").stat().st_size for p in ("fp32", "fp16"))
    # exactly the constant weights went from 4 to 2 bytes; the sparse convs' stacked kernels stay f32
    assert size32 - size16 == 2 * constant_weights(built["fp32"] / "model.ncnn.param") > 0
    checks = {c["check"]: c for c in fp16["parity"]["ncnn/fp16"]["checks"]}
    assert fp16["parity"]["ncnn/fp16"]["passed"] and checks["real_image"]["min_psnr"] == 45.0
    worst16 = max(c["max_abs"] for c in checks.values())
    worst32 = max(c["max_abs"] for c in fp32["parity"]["ncnn/fp32"]["checks"])
    assert worst32 < worst16 <= 5e-3  # half weights are visible, within fp16's tolerance


def test_bundled_sr_x2_restores_through_the_cli_as_the_reference_does(tmp_path):
    loaded = load_model("sr-x2")
    export(loaded, tmp_path / "out", "ncnn", options())
    for tiling in TILINGS:
        proc = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "restore", *map(str, PHOTOS), "-m",
                               str(tmp_path / "out"), "--backend", "ncnn", "--tiling", tiling, "--threads", "1",
                               "-o", str(tmp_path / tiling)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        reference = Engine(TorchRunner("sr-x2", 1, net=loaded.net), loaded.config, tiling)
        for path in PHOTOS:
            got = np.asarray(Image.open(tmp_path / tiling / path.name))
            same, worst = agreement(got, to_uint8(reference.restore(photo(path).astype(np.float32) / 255)))
            assert same >= 0.99 and worst <= 1, (path.name, tiling, same, worst)


def test_runner_needs_no_torch(built, tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from nsr_deploy.runtimes import load\n"
            f"e = load({str(built['fp32'])!r}, backend='ncnn', threads=1)\n"
            "y = e.runner.infer(np.full((3, 3, 20, 28), 0.5, np.float32), np.ones((3, 1, 20, 28), np.float32))\n"
            "assert y.shape == (3, 3, 40, 56) and np.isfinite(y).all(), y.shape\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bad_options_and_inputs_are_refused(tiny, built, tmp_path):
    for bad, match in ((options("int8"), "ncnn supports precisions fp32, fp16"),
                       (ExportOptions(calib=str(tmp_path), show_progress=False), "--calib is for int8")):
        with pytest.raises(NSRError, match=match):
            export(tiny, tmp_path / "out", "ncnn", bad)
    assert list(tmp_path.iterdir()) == []
    with load(built["fp32"], backend="ncnn") as engine, pytest.raises(NSRError, match=r"x \[N, C, h, w\]"):
        engine.runner.infer(np.zeros((3, 20, 20), np.float32), np.ones((1, 20, 20), np.float32))


def test_failed_gate_leaves_no_output(tiny, tmp_path, monkeypatch):
    import nsr_deploy.checks.verdicts as verdicts

    monkeypatch.setattr(verdicts, "FP16_MAX_ABS", 0.0)  # the ONNX gate (fp32) still passes; ncnn fp16 cannot
    with pytest.raises(NSRError, match="parity gate failed: ncnn fp16"):
        export(tiny, tmp_path / "out", "ncnn", options("fp16"))
    assert list(tmp_path.iterdir()) == []
