"""examples/cpp (the OpenVINO C++ API, docs/contract.md): built with CMake against the openvino wheel,
run on the conformance vectors of a fixed-batch and a dynamic-batch export and on a real CSet5 image
through the bundled sr-x2; its window lists equal the vectors', its pixels `restore`'s within the
contract's tolerance. Needs cmake, a C++17 compiler and libpng (Debian: cmake g++ libpng-dev).

The build is cached under ~/.cache/nsr-deploy/cpp-build/<hash of the sources and OpenVINO version>.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, ROOT, within_contract_tolerance

SOURCES = ROOT / "examples" / "cpp"


def _missing() -> str | None:
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install cmake g++ libpng-dev)"
    if not Path("/usr/include/png.h").exists():
        return "libpng headers are not installed (apt-get install libpng-dev)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def binary():
    import openvino

    ov_dir = Path(openvino.__file__).parent
    key = hashlib.sha256(openvino.__version__.encode())
    for path in sorted(SOURCES.iterdir()):
        key.update(path.name.encode() + path.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nsr-deploy" / "cpp-build"
    build = cache / key.hexdigest()[:16]
    exe = build / "nsr_restore"
    if not exe.exists():
        tmp = cache / f".{build.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for cmd in (["cmake", "-S", str(SOURCES), "-B", str(tmp), f"-DOpenVINO_DIR={ov_dir / 'cmake'}"],
                    ["cmake", "--build", str(tmp), "-j2"]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        shutil.rmtree(build, ignore_errors=True)
        os.rename(tmp, build)
    return exe


def run_cpp(exe, folder, src, dst, tiling):
    done = subprocess.run([str(exe), str(folder), str(src), str(dst), tiling, "--windows"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), np.asarray(Image.open(dst))


@pytest.mark.parametrize("name", ["tiny-static", "sr-x2"])
def test_cpp_reproduces_the_conformance_vectors(binary, contract_exports, name, tmp_path):
    folder = contract_exports[name]
    section = json.loads((folder / "nsr.json").read_text())["conformance"]
    for v in section["vectors"]:
        windows, got = run_cpp(binary, folder, folder / v["input"], tmp_path / "out.png", v["tiling"])
        want = json.loads((folder / v["windows"]).read_text())
        assert (windows["window"], windows["pad"], windows["windows"]) == (want["window"], want["pad"],
                                                                          want["windows"]), v
        assert within_contract_tolerance(got, np.asarray(Image.open(folder / v["expected"]))), v


@pytest.mark.parametrize("tiling", ["reference", "cells"])
def test_cpp_equals_restore_on_a_real_image(binary, contract_exports, tiling, tmp_path):
    src = DATA / "CSet5" / "butterfly.png"  # 256 x 256: tiled by both modes
    out = tmp_path / "py.png"
    folder = contract_exports["sr-x2"]
    done = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "restore", str(src), "-m", str(folder),
                           "-o", str(out), "--tiling", tiling, "--backend", "onnxruntime"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    windows, got = run_cpp(binary, contract_exports["sr-x2"], src, tmp_path / "cpp.png", tiling)
    assert len(windows["windows"]) > 1
    assert within_contract_tolerance(got, np.asarray(Image.open(out)))


def test_cpp_refuses_bad_input_with_one_line(binary, contract_exports, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    done = subprocess.run([str(binary), str(contract_exports["sr-x2"]), str(bad), str(tmp_path / "o.png")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "o.png").exists()
