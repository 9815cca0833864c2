"""ONNX Runtime's load-time NCHWc specialisation of the portable model.onnx: equal to the portable
model, cached, falls back (with a warning) where it cannot run; short calls compute no padding."""

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import data_image, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.onnxruntime import nchwc_probe
from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner, SpecialisationWarning
from nsr_deploy.runtimes.onnxruntime.specialise import check_patches

# widths that are multiples of either NCHWc block (8 or 16); k*d nesting both ways ("repeat" / "share")
SPARSE = NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=32, groups=4, cardinals=4)
SHARED = NSRConfig(channels=1, scale=3, num_blocks=1, units=16, block_width=16, groups=2, cardinals=16)
HAVE_NCHWC = nchwc_probe.mlas_block_size() > 1
needs_nchwc = pytest.mark.skipif(not HAVE_NCHWC, reason="this ONNX Runtime has no NCHWc kernels on this CPU")


def _export(tmp_path, cfg, form="auto", name="out"):
    loaded = LoadedModel(decisive_net(cfg, 0, bias_std=0.05), "test", "built", "0" * 64, "test")
    export(loaded, tmp_path / name, "onnx", ExportOptions(conv_form=form, patch_batch=4, show_progress=False))
    return loaded, tmp_path / name


def _pair(path):
    return OrtRunner(str(path), 2), OrtRunner(str(path), 2, specialise=False)


@needs_nchwc
@pytest.mark.parametrize("cfg,form", [(SPARSE, "grouped"), (SHARED, "matmul")])
def test_specialised_model_equals_the_portable_one(tmp_path, cfg, form):
    loaded, folder = _export(tmp_path, cfg, form)
    blocked, portable = _pair(folder / "model.onnx")
    with blocked, portable, warnings.catch_warnings():
        warnings.simplefilter("error", SpecialisationWarning)
        assert blocked.specialisation["nchwc"] and blocked.specialisation["max_abs"] <= 1e-5
        assert blocked.specialisation["block"] == nchwc_probe.mlas_block_size()
        x, valid = check_patches(cfg.channels, 9, 40)  # 9: two full calls of 4 and a short one
        got, want = blocked.infer(x, valid), portable.infer(x, valid)
        assert np.abs(got - want).max() <= 1e-5
        with torch.no_grad():  # and both are the PyTorch reference
            ref = loaded.net(torch.from_numpy(x)).numpy()
        assert np.abs(blocked.infer(x, np.ones_like(valid)) - ref).max() <= 1e-4


@needs_nchwc
def test_second_load_reuses_the_cached_blocked_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NSR_DEPLOY_CACHE", str(tmp_path / "cache"))
    _, folder = _export(tmp_path, SPARSE)
    with OrtRunner(str(folder / "model.onnx"), 2) as first:
        assert first.specialisation["nchwc"] and not first.specialisation["cached"]
    with OrtRunner(str(folder / "model.onnx"), 2) as second:
        assert second.specialisation["cached"] and second.specialisation["file"] == first.specialisation["file"]
    assert sorted(p.name.split("-n")[-1] for p in (tmp_path / "cache" / "onnxruntime").iterdir()) == \
        ["1.onnx", "1.onnx.json", "4.onnx", "4.onnx.json"]  # both batches and their records; no temp file left


@needs_nchwc
def test_another_block_size_falls_back_to_the_portable_model(tmp_path, monkeypatch):
    """A CPU whose block differs from the one a blocked graph was built for (as if the folder had been
    specialised elsewhere): the check fails, the runner warns and runs the portable file."""
    _, folder = _export(tmp_path, SPARSE)
    other = 8 if nchwc_probe.mlas_block_size() == 16 else 16
    monkeypatch.setattr(nchwc_probe, "mlas_block_size", lambda: other)
    blocked, portable = _pair(folder / "model.onnx")
    with pytest.warns(SpecialisationWarning, match="portable model"), blocked, portable:
        assert not blocked.specialisation["nchwc"]
        x, valid = check_patches(3, 4, 24)
        assert np.array_equal(blocked.infer(x, valid), portable.infer(x, valid))


def test_a_cpu_without_nchwc_kernels_runs_the_portable_model_quietly(tmp_path, monkeypatch):
    """ARM, or x86 without AVX2: the portable model is all ONNX Runtime has there. No warning (nothing is
    lost), and the runner's description says why the rewrite did not happen."""
    _, folder = _export(tmp_path, SPARSE)
    monkeypatch.setattr(nchwc_probe, "mlas_block_size", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecialisationWarning)
        with OrtRunner(str(folder / "model.onnx"), threads=1) as runner:
            assert runner.specialisation["nchwc"] is False
            assert runner.specialisation["why_not"] == "this ONNX Runtime has no NCHWc kernels on this CPU"


@needs_nchwc
def test_whole_small_image_computes_its_own_pixels(tmp_path):
    """150x150 is below 4 x patch: one patch. Through the static batch of 4 it used to cost 4x (16x at
    the default batch); the batch-1 blocked twin computes it once, with the same output."""
    _, folder = _export(tmp_path, SPARSE)
    img = data_image("CSet14", 0)[:150, :150]
    with load(folder, threads=2) as engine:
        out = engine.restore(img)
        assert engine.last_stats["compute_ratio"] <= 1.1 and engine.last_stats["windows"] == 1
    runner = OrtRunner(str(folder / "model.onnx"), 2, specialise=False)
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.manifest import manifest_config, read_manifest

    with Engine(runner, manifest_config(read_manifest(folder))) as portable:
        want = portable.restore(img)
        assert portable.last_stats["compute_ratio"] == 4.0  # the padding is computed, and reported
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1


def test_without_nchwc_kernels_a_whole_small_image_runs_on_the_exported_batch_one_file(tmp_path, monkeypatch):
    """ARM: no NCHWc twin can be built at load, so the export's model-b1.onnx (hashed in nsr.json) runs the
    whole image once instead of padding it to the fixed batch; a swapped twin is refused."""
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.manifest import manifest_config, read_manifest

    _, folder = _export(tmp_path, SPARSE)
    entry = json.loads((folder / "nsr.json").read_text())["targets"]["onnx"]
    assert entry["static_batch"] == 4 and entry["batch_one"]["static_batch"] == 1
    monkeypatch.setattr(nchwc_probe, "mlas_block_size", lambda: 1)
    img = data_image("CSet14", 0)[:150, :150]
    with load(folder, threads=2) as engine:
        assert engine.runner.specialisation["nchwc"] is False and engine.runner.single is not None
        out = engine.restore(img)
        assert engine.last_stats["compute_ratio"] <= 1.1 and engine.last_stats["windows"] == 1
    with Engine(OrtRunner(str(folder / "model.onnx"), 2), manifest_config(read_manifest(folder))) as bare:
        want = bare.restore(img)  # the file alone (no manifest, so no twin named): the padding is paid
        assert bare.last_stats["compute_ratio"] == 4.0
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
    (folder / "model-b1.onnx").write_bytes((folder / "model.onnx").read_bytes())
    with pytest.raises(NSRError, match="model-b1.onnx: its sha256 differs"):
        load(folder, threads=2).restore(img)


def test_only_a_fixed_batch_model_gets_a_batch_one_twin(tmp_path):
    _, folder = _export(tmp_path, SPARSE, "matmul")
    assert "batch_one" not in json.loads((folder / "nsr.json").read_text())["targets"]["onnx"]
    assert not (folder / "model-b1.onnx").exists()


def test_every_session_runs_without_the_memory_pattern(tmp_path):
    """The memory pattern doubles activation memory (docs/backends/onnxruntime.md): off in the main session and
    in the batch-1 one, specialised or portable."""
    _, folder = _export(tmp_path, SPARSE)
    options = []
    for runner in _pair(folder / "model.onnx"):
        with runner:
            options += [s.get_session_options() for s in (runner.session, runner.single) if s is not None]
    with load(folder, backend="onnxruntime", threads=2) as engine:  # the manifest's batch-1 twin
        options += [s.get_session_options() for s in (engine.runner.session, engine.runner.single)]
    assert len(options) >= 4 and all(o.enable_mem_pattern is False for o in options)
