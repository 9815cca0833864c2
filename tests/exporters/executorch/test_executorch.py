"""ExecuTorch target: XNNPACK lowering of the ``scaled-mix`` form at fp32 / fp16 with their gates, the delegated
share of ops and the sparse-layer fallback rule, the runner behind the common interface, and ``restore
--backend executorch`` against the PyTorch reference on CSet5 / CSet14 photos with both tilings, for a
tiny NSR model and the bundled sr-x2."""

import ast
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DEVICE_PHOTOS, DEVICE_TINY, agreement, decisive_net, device_options
from conftest import photo_rgb as photo
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel, load_model, save_native
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.engine import Engine, to_uint8
from nsr_deploy.runtimes.executorch.runner import ExecuTorchRunner
from nsr_deploy.runtimes.manifest import read_manifest
from nsr_deploy.runtimes.torch.runner import TorchRunner

pytest.importorskip("executorch.runtime", reason="executorch is not installed (pip install 'nsr-deploy[executorch]')")

TINY = DEVICE_TINY
SMALLEST = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
PHOTOS = DEVICE_PHOTOS
TILINGS = ("reference", "cells")


def options(precision: str = "fp32", conv_form: str = "auto", **kw) -> ExportOptions:
    return device_options("executorch", precision, conv_form=conv_form, **kw)


@pytest.fixture(scope="module")
def tiny(device_exports):
    return device_exports.loaded  # the model the shared exports were made from


@pytest.fixture(scope="module")
def built(device_exports):
    """precision -> DEVICE_TINY's executorch export (shared with tests/test_conformance.py)."""
    return {precision: device_exports("executorch", precision) for precision in ("fp32", "fp16")}


def test_fp32_export_is_fully_delegated_gated_and_states_what_was_verified(built):
    folder = built["fp32"]
    manifest = read_manifest(folder)
    entry = manifest["targets"]["executorch"]
    assert entry["file"] == "model.pte" and (folder / "model.pte").is_file()
    assert entry["conv_form"] == "scaled-mix" and entry["static_batch"] == 1 and entry["io_dtype"] == "float32"
    found = entry["delegation"]
    assert found["delegated_fraction"] == 1.0 and found["not_delegated"] == {} and found["sparse_fallback"] == {}
    assert found["delegated_ops"] == found["ops"] > 10 * TINY.num_blocks
    places = manifest["runs_on"]["executorch"]
    assert any("x86-64" in p["where"] for p in places["verified"])
    assert any("ARM64" in p["where"] and p["why"] for p in places["not_verified"])
    parity = manifest["parity"]["executorch/fp32"]
    assert parity["passed"] and {c["check"] for c in parity["checks"]} == {"random_patches", "real_image"}
    assert all(c["max_abs"] <= 1e-4 for c in parity["checks"])
    assert manifest["tools"]["executorch"]


def test_fp16_runs_in_half_and_passes_the_fp16_judge(built):
    fp32, fp16 = (read_manifest(built[p]) for p in ("fp32", "fp16"))
    entry = fp16["targets"]["executorch"]
    assert entry["io_dtype"] == "float16"
    # every op of the sparse layers is delegated; what is not is two casts of the scalar image mean
    assert entry["delegation"]["sparse_fallback"] == {}
    assert set(entry["delegation"]["not_delegated"]) <= {"dim_order_ops._to_dim_order_copy.default"}
    checks = {c["check"]: c for c in fp16["parity"]["executorch/fp16"]["checks"]}
    assert fp16["parity"]["executorch/fp16"]["passed"] and checks["real_image"]["min_psnr"] == 45.0
    worst16 = max(c["max_abs"] for c in checks.values())
    worst32 = max(c["max_abs"] for c in fp32["parity"]["executorch/fp32"]["checks"])
    assert worst32 < 1e-5 < worst16 <= 5e-3  # half precision is visible, within fp16's tolerance
    with load(built["fp16"], backend="executorch", threads=1) as engine:
        assert engine.runner.precision == "fp16"


@pytest.mark.slow
def test_bundled_sr_x2_restores_through_the_cli_as_the_reference_does(tmp_path):
    images = [photo(p) for p in PHOTOS]
    loaded = load_model("sr-x2")
    manifest = export(loaded, tmp_path / "out", "executorch", options())
    assert manifest["targets"]["executorch"]["delegation"]["delegated_fraction"] == 1.0
    for tiling in TILINGS:
        if tiling == "reference":  # the command line once; the other tiling through the same loader in-process
            proc = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "restore", *map(str, PHOTOS), "-m",
                                   str(tmp_path / "out"), "--backend", "executorch", "--tiling", tiling,
                                   "--threads", "1", "-o", str(tmp_path / tiling)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            assert ".cpp:" not in proc.stderr  # the runtime's C++ log lines are dropped while the file loads
            got = [np.asarray(Image.open(tmp_path / tiling / path.name)) for path in PHOTOS]
        else:
            with load(tmp_path / "out", backend="executorch", threads=1, tiling=tiling) as engine:
                got = [engine.restore(image) for image in images]
        reference = Engine(TorchRunner("sr-x2", 1, net=loaded.net), loaded.config, tiling)
        for path, image, out in zip(PHOTOS, images, got):
            same, worst = agreement(out, to_uint8(reference.restore(image.astype(np.float32) / 255)))
            assert same >= 0.99 and worst <= 1, (path.name, tiling, same, worst)


def test_a_sparse_layer_left_to_portable_kernels_fails_the_export_unless_allowed(tmp_path):
    net = decisive_net(SMALLEST, seed=2)
    checkpoint, _ = save_native(net, tmp_path / "smallest.safetensors")
    proc = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "export", str(checkpoint), "--target", "executorch",
                           "--conv-form", "dense-mix", "--threads", "1", "-o", str(tmp_path / "refused")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: XNNPACK leaves ops of the sparse layers to portable kernels in conv form "
                                  "'dense-mix' (")
    assert "aten.mean.dim" in proc.stderr and "--allow-fallback" in proc.stderr
    assert not (tmp_path / "refused").exists()
    smallest = LoadedModel(net, "smallest", "built", "0" * 64, "smallest")
    manifest = export(smallest, tmp_path / "allowed", "executorch", options(conv_form="dense-mix", allow_fallback=True))
    found = manifest["targets"]["executorch"]["delegation"]
    # the pooling without keepdim and the k-group sum over a 5-d view stay outside XNNPACK
    assert 0 < found["delegated_fraction"] < 1 and found["sparse_fallback"]["aten.mean.dim"] == SMALLEST.num_blocks * 2
    assert manifest["parity"]["executorch/fp32"]["passed"]  # portable kernels compute the same math


def test_runner_brings_torch_in_only_when_used():
    """ExecuTorch's Python bindings link libtorch and take torch tensors; the runner imports torch only in
    the methods that run the file, so importing it (and the runtimes package) stays torch-free."""
    from nsr_deploy.runtimes.executorch import runner as executorch_runner

    tree = ast.parse(open(executorch_runner.__file__).read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("torch" in (getattr(n, "module", "") or "") or any("torch" in a.name for a in n.names)
                   for n in top)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from nsr_deploy.runtimes.executorch.runner import unavailable\n"
            "print(unavailable())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "needs torch" in proc.stdout, proc.stderr


def test_bad_options_and_inputs_are_refused(tiny, built, tmp_path):
    for bad, match in ((options("int8"), "executorch supports precisions fp32, fp16"),
                       (options(calib=str(tmp_path)), "--calib is for int8")):
        with pytest.raises(NSRError, match=match):
            export(tiny, tmp_path / "out", "executorch", bad)
    assert list(tmp_path.iterdir()) == []
    with load(built["fp32"], backend="executorch") as engine:
        with pytest.raises(NSRError, match=r"x \[N, C, h, w\]"):
            engine.runner.infer(np.zeros((3, 20, 20), np.float32), np.ones((1, 20, 20), np.float32))
        with pytest.raises(NSRError, match="larger than the 512x512"):
            engine.runner.infer(np.zeros((1, 3, 20, 600), np.float32), np.ones((1, 1, 20, 600), np.float32))
        y = engine.runner.infer(np.full((3, 3, 20, 28), 0.5, np.float32), np.ones((3, 1, 20, 28), np.float32))
        assert y.shape == (3, 3, 40, 56) and np.isfinite(y).all()
    cut = tmp_path / "cut.pte"
    cut.write_bytes((built["fp32"] / "model.pte").read_bytes()[:5000])
    with pytest.raises(NSRError, match="ExecuTorch cannot load it"):
        ExecuTorchRunner(str(cut)).activate()


def test_failed_gate_leaves_no_output(tmp_path, monkeypatch):
    import nsr_deploy.checks.verdicts as verdicts

    smallest = LoadedModel(decisive_net(SMALLEST, seed=3), "smallest", "built", "0" * 64, "smallest")
    monkeypatch.setattr(verdicts, "FP16_MAX_ABS", 0.0)  # the ONNX gate (fp32) still passes; ExecuTorch fp16 cannot
    with pytest.raises(NSRError, match="parity gate failed: ExecuTorch fp16"):
        export(smallest, tmp_path / "out", "executorch", options("fp16"))
    assert list(tmp_path.iterdir()) == []
