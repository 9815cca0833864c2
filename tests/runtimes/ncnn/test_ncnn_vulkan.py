"""ncnn on a Vulkan GPU (Mesa's lavapipe on a CI box: Debian's mesa-vulkan-drivers): the tests' tiny sparse
model restores a real photo crop on the GPU as on the CPU (docs/contract.md's rule: at most one 8-bit level,
on at most 0.1% of the values), through the runner option (``vulkan=True``) and through ``load()`` and the CLI
(``NSR_NCNN_DEVICE=vulkan``); the runner names the Vulkan device ncnn bound the net to. Skips, with the reason,
where ncnn sees no Vulkan device. Measurements (fp16 on vs off): docs/notes/ncnn-vulkan.md."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DEVICE_PHOTOS, photo_rgb, within_contract_tolerance
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.engine import Engine
from nsr_deploy.runtimes.ncnn.runner import DEVICE_ENV, REDUCED_PRECISION_OPTIONS, NcnnRunner

ncnn = pytest.importorskip("ncnn")
pytest.importorskip("pnnx")


def vulkan_gpus() -> int:
    return ncnn.get_gpu_count()  # 0 without a Vulkan loader or driver; ncnn logs the devices it finds to stderr


needs_gpu = pytest.mark.skipif(vulkan_gpus() == 0, reason="ncnn sees no Vulkan device here (Debian: apt-get install "
                                                          "mesa-vulkan-drivers gives the lavapipe CPU device)")


@pytest.fixture(scope="module")
def folder(device_exports):
    return device_exports("ncnn")  # DEVICE_TINY, fp32, grouped (shared with the ncnn target's tests)


@pytest.fixture(scope="module")
def crop():
    """A real photo crop that tiles (reference tiling: a grid of 48x48 patches and the border strips)."""
    return np.ascontiguousarray(photo_rgb(DEVICE_PHOTOS[0])[8:208, 16:240])  # 200 x 224 of butterfly


@pytest.fixture(scope="module")
def on_cpu(folder, crop):
    with load(folder, backend="ncnn", threads=1) as engine:
        assert engine.runner.describe()["device"] == "cpu"
        return engine.restore(crop)


@needs_gpu
def test_vulkan_restores_a_real_crop_as_the_cpu_does_and_names_its_device(folder, crop, on_cpu, monkeypatch):
    """The run behind ncnn's verified Vulkan entry in runs_on (fp32, grouped files)."""
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    entry = json.loads((folder / "nsr.json").read_text())["targets"]["ncnn"]
    assert (entry["precision"], entry["conv_form"]) == ("fp32", "grouped")
    cpu = load(folder, backend="ncnn", threads=1)  # the folder's verified files, run by a GPU runner
    runner = NcnnRunner(cpu.runner.path, 1, vulkan=True, files=cpu.runner.engine_files())
    with Engine(runner, cpu.config, manifest=cpu.manifest) as engine:
        got = engine.restore(crop)
        facts, net = engine.runner.describe(), engine.runner.net
        index = ncnn.get_default_gpu_index()
        assert facts["device"] == "vulkan"
        assert facts["vulkan_device"] == {"index": index, "name": ncnn.get_gpu_info(index).device_name()}
        assert net.vulkan_device().info().device_name() == facts["vulkan_device"]["name"]
        assert net.opt.use_vulkan_compute and not any(getattr(net.opt, o) for o in REDUCED_PRECISION_OPTIONS)
    levels = np.abs(got.astype(int) - on_cpu.astype(int))
    assert within_contract_tolerance(got, on_cpu), (facts["vulkan_device"], int(levels.max()),
                                                    float(np.count_nonzero(levels) / levels.size))


@needs_gpu
def test_the_environment_puts_load_and_the_cli_on_the_gpu(folder, crop, on_cpu, tmp_path, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "vulkan:0")
    engine = load(folder, backend="ncnn", threads=1)
    assert (engine.runner.vulkan, engine.runner.gpu) == (True, 0)
    Image.fromarray(crop).save(tmp_path / "crop.png")
    proc = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "restore", str(tmp_path / "crop.png"), "-m",
                           str(folder), "--backend", "ncnn", "--threads", "1", "-o", str(tmp_path / "big.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # and no crash when ncnn's GPU instance goes at exit
    assert within_contract_tolerance(np.asarray(Image.open(tmp_path / "big.png")), on_cpu)


def test_device_spellings(folder, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert load(folder, backend="ncnn").runner.vulkan is False  # unset: the CPU
    for value, want in (("cpu", (False, None)), ("vulkan", (True, None)), (" Vulkan:1 ", (True, 1))):
        monkeypatch.setenv(DEVICE_ENV, value)
        runner = load(folder, backend="ncnn").runner
        assert (runner.vulkan, runner.gpu) == want, value
    assert NcnnRunner(str(folder), vulkan=False).vulkan is False  # an explicit choice wins (the export gate's CPU)
    for bad in ("gpu", "vulkan:x", "vulkan:-1"):
        monkeypatch.setenv(DEVICE_ENV, bad)
        with pytest.raises(NSRError, match=f"{DEVICE_ENV}=.*expected cpu, vulkan or vulkan:N"):
            load(folder, backend="ncnn")


def test_a_missing_gpu_is_refused_in_one_line(folder, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(ncnn, "get_gpu_count", lambda: 0)
    with pytest.raises(BackendUnavailable, match="sees no Vulkan GPU"):
        NcnnRunner(str(folder / "model.ncnn.param"), vulkan=True).activate()
    monkeypatch.setattr(ncnn, "get_gpu_count", lambda: 1)
    with pytest.raises(NSRError, match="there is no GPU 3"):
        NcnnRunner(str(folder / "model.ncnn.param"), vulkan=True, gpu=3).activate()
