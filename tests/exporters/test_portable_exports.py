"""Export once, run anywhere: the same checkpoint and options give byte-identical engine files from
separate processes (one of them on a busy CPU); the default ONNX model runs in onnxruntime-node and
onnxruntime-web (WebAssembly) with the Python runtime's output; a bare .onnx describes itself."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, data_image, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models.checkpoint import save_reference_checkpoint
from nsr_deploy.runtimes import backend_unavailable
from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

CFG = NSRConfig(channels=3, scale=2, num_blocks=1, units=16, block_width=16, groups=2, cardinals=4)
HAVE_OPENVINO = backend_unavailable("openvino") is None
ORT_JS = "1.30.0"  # the newest onnxruntime-node / -web: the releases that refused IR version 14
NPM_CACHE = Path(os.environ.get("NSR_NPM_CACHE", Path.home() / ".cache" / "nsr-deploy-tests" / f"npm-ort-{ORT_JS}"))

# Exports the checkpoint with default options, while a numpy thread keeps a core busy when asked: timing
# or thread scheduling must not leak into the files.
EXPORT = """
import sys, threading, numpy as np
from nsr_deploy.cli import main
stop = threading.Event()
def busy():
    a = np.random.default_rng(0).random((300, 300))
    while not stop.is_set():
        a @ a
if sys.argv[1] == "busy":
    threading.Thread(target=busy, daemon=True).start()
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    stop.set()
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    ckpt = root / "ckpt.pt"
    save_reference_checkpoint(decisive_net(CFG), ckpt)
    target = "openvino" if HAVE_OPENVINO else "onnx"
    folders = []
    for i, mode in enumerate(("quiet", "busy")):
        out = root / f"out-{i}"
        proc = subprocess.run([sys.executable, "-c", EXPORT, mode, "export", str(ckpt), "-t", target, "-o", str(out)],
                              capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        folders.append((out, proc.stdout))
    return folders


def test_exports_in_separate_processes_are_byte_identical(exports):
    (a, _), (b, _) = exports
    manifest = json.loads((a / "nsr.json").read_text())
    files = [t["file"] for t in manifest["targets"].values()] + \
        [t["weights"] for t in manifest["targets"].values() if "weights" in t]
    # with OpenVINO the export is its IR (and the model.onnx it is lowered from); without, the ONNX model alone
    assert "model.onnx" in files and ("model.bin" in files) == ("model.xml" in files) == HAVE_OPENVINO
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = json.loads((b / "nsr.json").read_text())
    for doc in (manifest, other):  # timings may differ, and only in their own fields
        doc.pop("export_seconds")
        for t in doc["targets"].values():
            t.pop("compile_seconds", None)
    assert manifest == other


def test_export_says_where_the_folder_runs(exports):
    folder, stdout = exports[0]
    manifest = json.loads((folder / "nsr.json").read_text())
    assert set(manifest["runs_on"]) == set(manifest["targets"])
    places = manifest["runs_on"]["onnx"]
    printed = [line for line in stdout.splitlines() if line.startswith("runs on (model.onnx)")]
    unverified = [line for line in stdout.splitlines() if line.startswith("not verified here (model.onnx)")]
    assert len(printed) == len(places["verified"]) and len(unverified) == len(places["not_verified"]) > 0
    assert any("onnxruntime-web" in line for line in printed) and all("[run by " in line for line in printed)


def test_bare_onnx_file_loads_without_nsr_json_or_the_onnx_package(exports, tmp_path):
    """Only ONNX Runtime importable (as with an app that vendors it): the contract comes from the
    model's own metadata, read by ONNX Runtime."""
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(exports[0][0] / "model.onnx", bare)
    code = ("import sys, numpy as np; sys.modules['onnx'] = None; sys.modules['torch'] = None\n"
            "from nsr_deploy.runtimes import load\n"
            f"e = load({str(bare)!r}, threads=1)\n"
            "y = e.restore(np.full((20, 30, 3), 128, np.uint8)); print(y.shape, e.config.scale)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(40,", "60,", "3)", "2"]


def _npm_packages() -> Path:
    """onnxruntime-node and -web installed once into a cache folder outside the repository."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node / npm are not installed")
    modules = NPM_CACHE / "node_modules"
    if (modules / "onnxruntime-node").is_dir() and (modules / "onnxruntime-web").is_dir():
        return modules
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    (NPM_CACHE / "package.json").write_text('{"private": true}\n')
    try:  # ONNXRUNTIME_NODE_INSTALL=skip: no GPU binaries; the CPU ones are in the package
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"onnxruntime-node@{ORT_JS}",
                               f"onnxruntime-web@{ORT_JS}"], cwd=NPM_CACHE, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"})
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of onnxruntime-node / -web timed out (registry unreachable?)")
    if proc.returncode != 0:
        pytest.skip(f"npm cannot install onnxruntime-node / -web here: {proc.stderr.strip().splitlines()[-1:]}")
    return modules


def test_default_onnx_runs_in_onnxruntime_node_and_web(exports, tmp_path):
    modules = _npm_packages()
    model = exports[0][0] / "model.onnx"
    with OrtRunner(str(model), 1, specialise=False) as runner:
        batch = runner.static_batch
        img = data_image("CSet5", 0).astype(np.float32) / 255.0  # real photo: batch crops of 40x40
        x = np.stack([img[i * 8:i * 8 + 40, i * 11:i * 11 + 40].transpose(2, 0, 1) for i in range(batch)])
        valid = np.ones((batch, 1, 40, 40), np.float32)
        valid[:, :, :, -4:] = 0  # a padded border, as tiled windows have
        want = runner.infer(x, valid)
    (tmp_path / "x.bin").write_bytes(np.ascontiguousarray(x, np.float32).tobytes())
    (tmp_path / "v.bin").write_bytes(valid.tobytes())
    script = ROOT / "tests" / "exporters" / "js" / "run_onnx.js"
    proc = subprocess.run(["node", str(script), str(model), str(tmp_path / "x.bin"),
                           json.dumps(list(x.shape)), str(tmp_path / "v.bin"), json.dumps(list(valid.shape)),
                           str(tmp_path / "y")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NODE_PATH": str(modules)})
    assert proc.returncode == 0, proc.stderr
    for name in ("onnxruntime-node", "onnxruntime-web"):
        got = np.frombuffer((tmp_path / f"y.{name}.bin").read_bytes(), np.float32).reshape(want.shape)
        assert np.abs(got - want).max() <= 1e-5, name
