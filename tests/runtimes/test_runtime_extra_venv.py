"""The torch-free ``runtime`` extra alone runs an export folder through ONNX Runtime (specialised at
load) and OpenVINO: a fresh venv with only ``pip install '.[runtime]'``.

Runs on every CI run: 20 s here with pip's cache warm, about 2.5 minutes on a machine whose cache is
cold (ONNX Runtime, OpenVINO and onnx wheels). ``NSR_SKIP_FRESH_VENV=1`` skips it for a quick local run.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, data_image, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.runtimes import backend_unavailable, load

pytestmark = pytest.mark.skipif(bool(os.environ.get("NSR_SKIP_FRESH_VENV")),
                                reason="NSR_SKIP_FRESH_VENV is set (the fresh venv with the runtime extra is skipped)")
CFG = NSRConfig(channels=3, scale=2, num_blocks=1, units=16, block_width=16, groups=2, cardinals=4)
RESTORE = """
import sys, numpy as np
try:
    import torch  # noqa: F401
    sys.exit("torch is importable: not a runtime-only venv")
except ImportError:
    pass
from nsr_deploy.runtimes import load
folder, image, out = sys.argv[1:]
img = np.load(image)
for backend in ("onnxruntime", "openvino"):
    with load(folder, backend=backend, threads=1) as engine:
        np.save(f"{out}-{backend}.npy", engine.restore(img))
        print(backend, engine.runner.describe().get("specialisation", {}) or {})
"""


def test_runtime_extra_alone_restores_through_onnxruntime_and_openvino(tmp_path):
    if backend_unavailable("openvino"):
        pytest.skip("OpenVINO is not installed here: cannot build the IR to restore")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{ROOT}[runtime]"], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = LoadedModel(decisive_net(CFG), "test", "built", "0" * 64, "test")
    folder = tmp_path / "out"
    export(loaded, folder, "openvino", ExportOptions(show_progress=False))
    img = data_image("CSet5", 1)[:120, :150]
    np.save(tmp_path / "img.npy", img)
    proc = subprocess.run([str(python), "-c", RESTORE, str(folder), str(tmp_path / "img.npy"), str(tmp_path / "y")],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NSR_DEPLOY_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'nchwc': True" in proc.stdout or "no NCHWc kernels" in proc.stdout
    for backend in ("onnxruntime", "openvino"):
        with load(folder, backend=backend, threads=1) as engine:
            want = engine.restore(img)
        got = np.load(tmp_path / f"y-{backend}.npy")
        assert got.shape == (240, 300, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1, backend
    # restore without -m: the default is a checkpoint, which needs torch: one line saying what to do instead
    Image.fromarray(img).save(tmp_path / "img.png")
    proc = subprocess.run([str(python), "-m", "nsr_deploy.cli", "restore", str(tmp_path / "img.png"), "-o",
                           str(tmp_path / "big.png")], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: no -m given") and "-m EXPORT_FOLDER" in proc.stderr
    assert not (tmp_path / "big.png").exists()
