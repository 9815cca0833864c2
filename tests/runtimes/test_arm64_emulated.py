"""The torch-free runtime on ARM64 (aarch64) Linux, executed: the bundled sr-x2's ONNX, OpenVINO and ncnn
exports, made here on x86-64, restore a real photo inside an aarch64 Python under qemu-user emulation
(tools/arm64_userland.py: Debian's arm64 Python 3.11 and the runtimes' aarch64 wheels, cached under
~/.cache/nsr-deploy/arm64), through the Python API and through `nsr-deploy restore`. Each result is the x86
restore's, within one 8-bit level on at most 0.1% of values.

Emulation is slow (tens of seconds per export): the photo is a 64 x 64 crop and the exports have a patch
batch of 2. Emulated timings are not speed, and none is reported. Skips, with the reason, where the
userland cannot be built (not x86-64 Linux, no apt, no network to the Debian and PyPI registries).
"""

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, agreement, data_image
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import load_model
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.manifest import read_manifest

pytestmark = pytest.mark.slow
# backend -> the export folder it runs: the OpenVINO export carries the portable model.onnx too
FOLDER = {"onnxruntime": "openvino", "openvino": "openvino", "ncnn": "ncnn"}
RESTORE = """
import json, platform, sys
import numpy as np
from nsr_deploy.runtimes import load
root, image = sys.argv[1], np.load(sys.argv[2])
report = {"machine": platform.machine(), "runners": {}}
for backend, folder in json.loads(sys.argv[3]).items():
    with load(f"{root}/{folder}", backend=backend, threads=2) as engine:
        np.save(f"{root}/{backend}-arm64.npy", engine.restore(image))
        report["runners"][backend] = engine.runner.describe()
print(json.dumps(report, default=str))
"""


def _userland_tool():
    spec = importlib.util.spec_from_file_location("arm64_userland", ROOT / "tools" / "arm64_userland.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def userland():
    tool = _userland_tool()
    try:
        return tool.ensure(say=lambda line: print(line, flush=True))
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no aarch64 userland here: {e}")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """sr-x2 exported here on x86 (patch batch 2) into ``FOLDER``'s folders, and a 64 x 64 crop of a real photo."""
    root = tmp_path_factory.mktemp("arm64")
    loaded = load_model("sr-x2")
    for target in sorted(set(FOLDER.values())):
        export(loaded, root / target, target, ExportOptions(patch_batch=2, threads=2, show_progress=False))
    crop = np.ascontiguousarray(data_image("CSet5", 2)[96:160, 96:160])
    np.save(root / "crop.npy", crop)
    Image.fromarray(crop).save(root / "crop.png")
    return root, crop


def _x86(folder, backend, image):
    with load(folder, backend=backend, threads=2) as engine:
        return engine.restore(image)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == np.uint8
    same, worst = agreement(got, want)
    assert worst <= 1 and same >= 0.999, (same, worst)


def test_every_arm64_export_restores_as_on_x86_under_emulation(userland, exports):
    root, crop = exports
    proc = userland.run("-c", RESTORE, str(root), str(root / "crop.npy"), json.dumps(FOLDER), paths=(ROOT,),
                        HOME=str(root), NSR_DEPLOY_CACHE=str(root / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["machine"] == "aarch64"
    assert set(report["runners"]) == set(FOLDER)
    # what runs_on claims for ARM64 (exporters/runs_on.py): the grouped ONNX model, the fp32 IR and ncnn files
    targets = {**read_manifest(root / "openvino")["targets"], **read_manifest(root / "ncnn")["targets"]}
    assert targets["onnx"]["conv_form"] == "grouped"
    assert targets["openvino"]["precision"] == targets["ncnn"]["precision"] == "fp32"
    for backend, folder in FOLDER.items():
        got = np.load(root / f"{backend}-arm64.npy")
        assert got.shape == (128, 128, 3) and report["runners"][backend]["backend"] == backend
        _same(got, _x86(root / folder, backend, crop))
    # ONNX Runtime's load-time NCHWc rewrite is x86-only: on ARM it declines, saying why, and the portable
    # model runs
    nchwc = report["runners"]["onnxruntime"]["specialisation"]
    assert nchwc["nchwc"] is False and nchwc["why_not"], nchwc
    assert "SpecialisationWarning" not in proc.stderr  # nothing is lost there: no warning, the reason recorded
    assert report["runners"]["openvino"]["precision"] == "fp32"


def test_cli_restore_on_arm64_writes_the_x86_image(userland, exports):
    """`nsr-deploy restore` itself on ARM64 (ncnn: the quickest engine under emulation), PNG in, PNG out."""
    root, crop = exports
    out = root / "big-arm64.png"
    proc = userland.run("-m", "nsr_deploy.cli", "restore", str(root / "crop.png"), "-m", str(root / "ncnn"),
                        "--backend", "ncnn", "-o", str(out), "--threads", "2", paths=(ROOT,), HOME=str(root),
                        NSR_DEPLOY_CACHE=str(root / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same(np.asarray(Image.open(out)), _x86(root / "ncnn", "ncnn", crop))
