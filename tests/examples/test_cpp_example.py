"""examples/cpp (the OpenVINO C++ API, docs/contract.md): built with CMake against the openvino wheel,
run on every conformance vector (8-bit, 16-bit, grey + alpha, palette, RGBA, EXIF orientation) of the
default export (a fixed batch with its batch_one file) and of a dynamic-batch one, and on real CSet5
images through the bundled sr-x2; its window lists equal the vectors', its engine calls follow the
contract's batch rule, its pixels are `restore`'s within the contract's tolerance (alpha exactly).
Needs cmake, a C++17 compiler and libpng (Debian: cmake g++ libpng-dev).

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


@pytest.fixture(scope="module")
def exports(contract_exports, tmp_path_factory) -> dict:
    """``default``: the bundled sr-x2 exported as `nsr-deploy export --conformance` does by default (the
    grouped form, a fixed batch of 16 and its batch_one file); ``dynamic``: sr-x2 in the matmul form."""
    from nsr_deploy.exporters.pipeline import ExportOptions, export
    from nsr_deploy.models import load_model

    folder = tmp_path_factory.mktemp("cpp-default") / "sr-x2"
    export(load_model("sr-x2"), folder, "onnx", ExportOptions(conv_form="auto", show_progress=False, conformance=True))
    return {"default": folder, "dynamic": contract_exports["sr-x2"]}


def run_cpp(exe, folder, src, dst, tiling="reference"):
    done = subprocess.run([str(exe), str(folder), str(src), str(dst), tiling, "--windows"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), np.asarray(Image.open(dst))


def expected_calls(folder, windows: int) -> dict:
    """docs/contract.md section 1: full calls on the main file; the rest on batch_one one window at a time
    where the export has it, else one call filled with copies. Dynamic engines: calls of 16 windows."""
    entry = json.loads((folder / "nsr.json").read_text())["targets"]["onnx"]
    n = entry["static_batch"] or 16
    if "batch_one" in entry:
        return {"model": windows // n, "batch_one": windows % n}
    return {"model": -(-windows // n), "batch_one": 0}


def matches(got: np.ndarray, want: np.ndarray) -> bool:
    """The contract's pass rule on the colour; alpha, which no engine touches, exactly."""
    if got.shape != want.shape:
        return False
    if got.ndim == 3 and got.shape[2] in (2, 4) and not np.array_equal(got[..., -1], want[..., -1]):
        return False
    return within_contract_tolerance(got, want)


@pytest.mark.parametrize("name", ["default", "dynamic"])
def test_cpp_reproduces_the_conformance_vectors(binary, exports, name, tmp_path):
    folder = exports[name]
    section = json.loads((folder / "nsr.json").read_text())["conformance"]
    assert {v["format"] for v in section["vectors"]} > {"8-bit"}
    for v in section["vectors"]:
        windows, got = run_cpp(binary, folder, folder / v["input"], tmp_path / "out.png", v["tiling"])
        want = json.loads((folder / v["windows"]).read_text())
        assert (windows["window"], windows["pad"], windows["windows"]) == (want["window"], want["pad"],
                                                                          want["windows"]), v
        assert windows["calls"] == expected_calls(folder, len(want["windows"])), v
        assert matches(got, np.asarray(Image.open(folder / v["expected"]))), v


def cli_restore(src, folder, out, tiling="reference"):
    done = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "restore", str(src), "-m", str(folder),
                           "-o", str(out), "--tiling", tiling, "--backend", "onnxruntime"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return np.asarray(Image.open(out))


@pytest.mark.parametrize("tiling", ["reference", "cells"])
def test_cpp_equals_restore_on_a_real_image(binary, exports, tiling, tmp_path):
    src = DATA / "CSet5" / "butterfly.png"  # 256 x 256: tiled by both modes
    want = cli_restore(src, exports["dynamic"], tmp_path / "py.png", tiling)
    windows, got = run_cpp(binary, exports["dynamic"], src, tmp_path / "cpp.png", tiling)
    assert len(windows["windows"]) > 1
    assert within_contract_tolerance(got, want)


def test_cpp_runs_a_whole_image_on_batch_one(binary, exports, tmp_path):
    """A whole 120 x 150 crop on the fixed-batch default export: one call of the batch_one file, one window
    computed; without the batch_one entry, one call of 16 copies. Both equal `restore`."""
    folder = exports["default"]
    src = tmp_path / "crop.png"
    Image.open(DATA / "CSet5" / "butterfly.png").convert("RGB").crop((20, 40, 170, 160)).save(src)
    want = cli_restore(src, folder, tmp_path / "py.png")
    windows, got = run_cpp(binary, folder, src, tmp_path / "cpp.png")
    assert (windows["calls"], windows["computed_windows"]) == ({"model": 0, "batch_one": 1}, 1)
    assert within_contract_tolerance(got, want)
    bare = tmp_path / "no-batch-one"
    shutil.copytree(folder, bare)
    doc = json.loads((bare / "nsr.json").read_text())
    del doc["targets"]["onnx"]["batch_one"]
    (bare / "nsr.json").write_text(json.dumps(doc))
    windows, got = run_cpp(binary, bare, src, tmp_path / "filled.png")
    assert (windows["calls"], windows["computed_windows"]) == ({"model": 1, "batch_one": 0}, 16)
    assert within_contract_tolerance(got, want)


def orientation_sources(orientation: int) -> dict:
    """Every way a PNG states an orientation that `restore` (Pillow's exif_transpose) applies."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = orientation
    profile, xmp = PngImagePlugin.PngInfo(), PngImagePlugin.PngInfo()
    profile.add_text("Raw profile type exif", f"\nexif\n{len(exif.tobytes()):8d}\n{exif.tobytes().hex()}\n", zip=True)
    xmp.add_itxt("XML:com.adobe.xmp", f'<rdf:Description tiff:Orientation="{orientation}"/>')
    return {"eXIf": {"exif": exif.tobytes()}, "hex profile": {"pnginfo": profile}, "XMP": {"pnginfo": xmp}}


def test_cpp_applies_every_orientation(binary, exports, tmp_path):
    """Every orientation, against the Python restore of the same file: 6 is a conformance vector; 3 and 8
    come from the other two places a PNG states one."""
    from nsr_deploy.runtimes import load
    from nsr_deploy.runtimes.host.images import read_image

    folder = exports["dynamic"]
    crop = Image.open(DATA / "CSet5" / "butterfly.png").convert("RGB").crop((60, 90, 91, 110))  # 20 x 31
    cases = [(o, "eXIf") for o in (2, 4, 5, 7)] + [(3, "hex profile"), (8, "XMP")]
    with load(folder, backend="onnxruntime", threads=1) as engine:
        for orientation, where in cases:
            src = tmp_path / "oriented.png"
            crop.save(src, **orientation_sources(orientation)[where])
            want = engine.restore(read_image(src, 3).pixels)
            assert want.shape[0] == (40 if orientation < 5 else 62), (orientation, where)  # restore applied it
            _, got = run_cpp(binary, folder, src, tmp_path / "out.png")
            assert within_contract_tolerance(got, want), (orientation, where)


def test_cpp_refuses_bad_input_with_one_line(binary, exports, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    done = subprocess.run([str(binary), str(exports["dynamic"]), str(bad), str(tmp_path / "o.png")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "o.png").exists()
