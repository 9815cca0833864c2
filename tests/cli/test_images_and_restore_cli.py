"""Image I/O shaped for models, and `nsr-deploy restore` on files and folders."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models.checkpoint import save_native
from nsr_deploy.models.network import NSRNet
from nsr_deploy.runtimes.host.images import read_image, write_image

CFG = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
GREY = NSRConfig(channels=1, scale=1, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_native(NSRNet(CFG), root / "colour")
    save_native(NSRNet(GREY), root / "grey")
    return root


def test_reads_every_format_and_mode(tmp_path):
    rgb = np.asarray(Image.open(sorted((DATA / "CSet5").iterdir())[0]))[:40, :30]
    for suffix in (".png", ".jpg", ".bmp", ".tif"):
        path = tmp_path / f"a{suffix}"
        Image.fromarray(rgb).save(path)
        img = read_image(path, 3)
        assert img.pixels.shape == (40, 30, 3) and img.pixels.dtype == np.uint8 and not img.warnings
    grey = read_image(tmp_path / "a.png", 1)
    assert grey.pixels.shape == (40, 30) and "converted to grey" in grey.warnings[0]
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    as_colour = read_image(tmp_path / "g.png", 3)
    assert as_colour.pixels.shape == (40, 30, 3) and "converted to RGB" in as_colour.warnings[0]


def test_sixteen_bit_is_converted_with_a_warning(tmp_path):
    arr = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png", 1)
    assert img.pixels.dtype == np.uint8 and any("8-bit" in w for w in img.warnings)
    assert img.pixels[-1, -1] == round(int(arr[-1, -1]) * 255 / 65535)


def test_rgba_keeps_alpha_upscaled(tmp_path):
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 10:, 3] = 255  # right half opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", 3)
    assert img.alpha is not None and img.pixels.shape == (16, 20, 3)
    write_image(tmp_path / "out.png", np.repeat(np.repeat(img.pixels, 2, 0), 2, 1), img.alpha)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (32, 40, 4)
    assert out[:, :16, 3].max() <= 10 and out[:, 24:, 3].min() >= 245
    assert write_image(tmp_path / "out.jpg", img.pixels, img.alpha) == [".jpg cannot hold alpha: alpha channel dropped"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nsr_deploy.cli", *args], capture_output=True, text=True)


def test_restore_folder_with_a_bad_file(tmp_path, models):
    src = tmp_path / "in"
    shutil.copytree(DATA / "CSet5", src)
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    proc = _cli("restore", str(src), "-m", str(models / "colour.safetensors"), "-o", str(out), "--json",
                "--tiling", "cells")
    assert proc.returncode == 1, proc.stderr  # some failed
    report = json.loads(proc.stdout)
    assert report["failed"] == 1
    ok = [r for r in report["images"] if r["ok"]]
    assert len(ok) == 5
    for r in ok:
        w, h = Image.open(r["input"]).size
        assert Image.open(r["output"]).size == (2 * w, 2 * h) == tuple(r["size_out"])
        assert r["compute_ratio"] <= 1.3
    bad = next(r for r in report["images"] if not r["ok"])
    assert "broken.png" in bad["error"] and "not a readable image" in bad["error"]


def test_a_warning_repeated_across_a_folder_is_printed_once_with_a_count(tmp_path, models):
    """Grey photos given to a colour model: the first file is named, the rest counted; --json keeps each."""
    src = tmp_path / "in"
    src.mkdir()
    for path in sorted((DATA / "BSD68").iterdir())[:3]:
        Image.open(path).convert("L").crop((0, 0, 40, 30)).save(src / path.with_suffix(".png").name)
    proc = _cli("restore", str(src), "-m", str(models / "colour.safetensors"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "grey image given to a colour model" in line]
    first = sorted(src.iterdir())[0]
    assert lines == [f"warning: {first}: grey image given to a colour model: converted to RGB",
                     "warning: grey image given to a colour model: converted to RGB: also on 2 more images"]
    proc = _cli("restore", str(src), "-m", str(models / "colour.safetensors"), "-o", str(tmp_path / "out2"), "--json")
    report = json.loads(proc.stdout)
    assert [len(r["warnings"]) for r in report["images"]] == [1, 1, 1]


def test_restore_never_overwrites_an_input(tmp_path, models):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    before = img.read_bytes()
    proc = _cli("restore", str(img), "-m", str(models / "grey.safetensors"), "-o", str(tmp_path))
    assert proc.returncode == 2 and "overwrite an input" in proc.stderr
    assert img.read_bytes() == before


def test_restore_single_file_grey(tmp_path, models):
    src = sorted((DATA / "BSD68").iterdir())[0]
    out = tmp_path / "denoised.png"
    proc = _cli("restore", str(src), "-m", str(models / "grey.safetensors"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == Image.open(src).size and Image.open(out).mode == "L"


def test_restore_bad_model_is_one_line(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    proc = _cli("restore", str(img), "-m", str(tmp_path / "nope"), "-o", str(tmp_path / "o.png"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
    assert "no such export folder, engine file, checkpoint or bundled model (denoise-s25" in proc.stderr
    for backend in ("onnxruntime", "ncnn"):  # named with a backend: still what is missing, not "a checkpoint"
        proc = _cli("restore", str(img), "-m", str(tmp_path / "nope"), "--backend", backend, "-o",
                    str(tmp_path / "o.png"))
        assert proc.returncode == 2 and "no such export folder" in proc.stderr, proc.stderr
