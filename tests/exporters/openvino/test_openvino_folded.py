"""OpenVINO's own ``folded`` form and ``--precision bf16``.

The folded graph is built from OpenVINO opsets, not traced, so its parity is checked against the PyTorch
reference network itself (Eq. 7-10 computed by ``SparseConv2d``) on random patches and on real photos,
for x2 / x3 / x4 and denoising (scale 1, no skip conv) models with several k and d. bf16 is checked
through its export gate, the precisions the compiled model really runs, and its refusal on CPUs without
native bf16 (the capability probe monkeypatched).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import data_image, decisive_net
from nsr_deploy.checks import verdicts
from nsr_deploy.checks.task import to_chw
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.form_rule import openvino_form
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.models.reference import reference_forward
from nsr_deploy.runtimes.engine import Engine
from nsr_deploy.runtimes.manifest import read_manifest
from nsr_deploy.runtimes.openvino import cpu_bf16
from nsr_deploy.runtimes.openvino.runner import OvRunner

ov = pytest.importorskip("openvino")

X2 = NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=16, groups=4, cardinals=8)
VARIANTS = {
    "x2-k4-d8": X2,
    "x3-k2-d4": NSRConfig(channels=3, scale=3, num_blocks=1, units=16, block_width=32, groups=2, cardinals=4),
    "x4-k8-d2": NSRConfig(channels=3, scale=4, num_blocks=1, units=16, block_width=16, groups=8, cardinals=2),
    "denoise-grey-k4-d16": NSRConfig(channels=1, scale=1, num_blocks=2, units=16, block_width=16, groups=4,
                                     cardinals=16),
}
BATCH = 4
NEEDS_BF16 = pytest.mark.skipif(cpu_bf16.bf16_unavailable() is not None,
                                reason=f"no native bf16 here: {cpu_bf16.bf16_unavailable()}")


def tiny(cfg: NSRConfig, seed: int = 0) -> LoadedModel:
    return LoadedModel(decisive_net(cfg, seed, bias_std=0.05), "tiny", "built", "0" * 64, "tiny")


def compiled(model):
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})


def photo(cfg: NSRConfig, folder: str, index: int, h: int, w: int) -> np.ndarray:
    img = data_image(folder, index)
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    chw = to_chw(img[:h, :w, :3])
    return chw if cfg.channels == 3 else chw.mean(axis=0, keepdims=True)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_folded_graph_matches_the_reference_on_random_patches(name):
    from nsr_deploy.exporters.openvino.folded import build_folded

    cfg = VARIANTS[name]
    loaded = tiny(cfg)
    model = compiled(build_folded(loaded, BATCH))
    rng = np.random.default_rng(1)
    for h, w in ((cfg.patch_size, cfg.patch_size), (19, 33)):  # any patch size the runner feeds
        x = rng.random((BATCH, cfg.channels, h, w), dtype=np.float32)
        valid = np.ones((BATCH, 1, h, w), np.float32)
        valid[:, :, -3:, :] = 0  # padding rows below the image: the skip conv must see zeros there
        got = model({"x": x, "valid": valid})[0]
        with torch.no_grad():
            xm = torch.from_numpy(x) - cfg.image_mean
            want = loaded.net.finish(loaded.net.head_tail(xm, torch.from_numpy(valid))).numpy()
        assert got.shape == (BATCH, cfg.channels, h * cfg.scale, w * cfg.scale)
        assert float(np.abs(got - want).max()) <= 1e-4, (name, h, w)
        assert float(np.abs(want).max()) > 0.1  # not a trivially small output


@pytest.fixture(scope="module")
def auto_exports(tmp_path_factory):
    """``--target openvino --conv-form auto`` of a sparse and a dense tiny model, at fp32."""
    root = tmp_path_factory.mktemp("folded")
    dense = NSRConfig.create(channels=3, scale=2, num_blocks=1, units=8, width_multiplier=1, sparse=False)
    out = {}
    for name, cfg in (("sparse", X2), ("dense", dense)):
        export(tiny(cfg), root / name, "openvino", ExportOptions(conv_form="auto", patch_batch=BATCH, threads=1,
                                                                 show_progress=False))
        out[name] = root / name
    return out


def test_auto_rule_gives_sparse_models_the_folded_form_and_dense_ones_the_onnx_lowering(auto_exports):
    assert openvino_form(X2, "auto")[0] == "folded"
    assert openvino_form(X2.dense_twin(), "auto") == (None, None)
    assert openvino_form(X2, "grouped") == (None, None)  # an explicit ONNX form is lowered as before
    sparse = read_manifest(auto_exports["sparse"])
    assert sparse["targets"]["openvino"]["conv_form"] == "folded"
    assert sparse["targets"]["openvino"]["static_batch"] == BATCH
    assert "folded" in sparse["targets"]["openvino"]["auto"]["rule"]
    assert sparse["targets"]["onnx"]["conv_form"] == "grouped"  # model.onnx stays portable
    assert sparse["parity"]["openvino/fp32"]["passed"]
    assert max(c["max_abs"] for c in sparse["parity"]["openvino/fp32"]["checks"]) <= 1e-4
    dense = read_manifest(auto_exports["dense"])
    assert dense["targets"]["openvino"]["conv_form"] == dense["targets"]["onnx"]["conv_form"] == "matmul"


def test_folded_ir_runs_a_real_photo_like_the_reference(auto_exports):
    loaded = tiny(X2)
    image = photo(X2, "CSet14", 2, 131, 157)  # not a multiple of the patch: border windows, padded batches
    with OvRunner(str(auto_exports["sparse"] / "model.xml"), threads=1, cache=False) as runner:
        assert runner.static_batch == BATCH
        got = Engine(runner, X2).restore_chw(image)
    want = reference_forward(loaded.net, torch.from_numpy(image[None]))[0].numpy()
    assert got.shape == want.shape == (3, 262, 314)
    assert float(np.abs(got - want).max()) <= 1e-4


def test_folded_ir_is_byte_reproducible(auto_exports, tmp_path):
    again = tmp_path / "again"
    export(tiny(X2), again, "openvino", ExportOptions(conv_form="auto", patch_batch=BATCH, threads=1,
                                                      show_progress=False))
    for name in ("model.xml", "model.bin"):
        assert (again / name).read_bytes() == (auto_exports["sparse"] / name).read_bytes(), name


def test_explicit_folded_form_exports_a_portable_onnx_beside_it(tmp_path):
    export(tiny(X2), tmp_path / "out", "openvino", ExportOptions(conv_form="folded", patch_batch=2, threads=1,
                                                                 show_progress=False))
    manifest = read_manifest(tmp_path / "out")
    assert manifest["targets"]["openvino"]["conv_form"] == "folded"
    assert manifest["targets"]["openvino"]["static_batch"] == 2
    assert manifest["targets"]["onnx"]["conv_form"] == "grouped"
    assert "folded" in manifest["targets"]["onnx"]["portable_instead_of"]


# -- bf16 --------------------------------------------------------------------------------------
def no_bf16(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})


def test_bf16_is_refused_with_the_reason_on_a_cpu_without_it(monkeypatch, tmp_path):
    no_bf16(monkeypatch)
    assert "avx512_bf16" in cpu_bf16.bf16_unavailable()
    with pytest.raises(NSRError, match="bf16 needs a CPU with AVX-512 BF16 or AMX"):
        export(tiny(X2), tmp_path / "out", "openvino", ExportOptions(precision="bf16", show_progress=False))
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(main, ["export", "--target", "openvino", "--precision", "bf16", "-o",
                                    str(tmp_path / "cli")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "avx512_bf16" in lines[0], res.output
    assert not (tmp_path / "cli").exists()


def test_bf16_is_refused_for_other_targets(tmp_path):
    res = CliRunner().invoke(main, ["export", "--target", "onnx", "--precision", "bf16", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.startswith("error: --precision bf16 is not honoured"), res.output
    assert "honoured by: openvino" in res.output


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory):
    if cpu_bf16.bf16_unavailable():
        pytest.skip(f"no native bf16 here: {cpu_bf16.bf16_unavailable()}")
    folder = tmp_path_factory.mktemp("bf16") / "out"
    export(tiny(X2), folder, "openvino", ExportOptions(conv_form="auto", precision="bf16", patch_batch=BATCH,
                                                       threads=1, show_progress=False))
    return folder


@NEEDS_BF16
def test_bf16_export_passes_its_gate_with_the_routing_in_f32(bf16_export):
    manifest = read_manifest(bf16_export)
    target, gate = manifest["targets"]["openvino"], manifest["parity"]["openvino/bf16"]
    assert target["precision"] == "bf16" and "AVX-512 BF16" in target["needs"]
    assert gate["passed"] and {c["check"] for c in gate["checks"]} == {"random_patches", "real_image",
                                                                      "task_psnr_drop"}
    assert all(c["psnr"] >= gate["min_psnr"] for c in gate["checks"] if c["check"] != "task_psnr_drop")
    drop = next(c for c in gate["checks"] if c["check"] == "task_psnr_drop")
    assert drop["drop_db"] <= gate["tolerance_drop_db"]
    used = target["runtime_precisions"]
    assert used["per_patch_conv"] == ["bf16"]  # really computed in bf16 ...
    for role in ("pooling_mlp", "softmax", "kernel_mixing"):  # ... but not the routing
        assert used[role] == ["f32"], (role, used)
    assert 'name="precise"' in (bf16_export / "model.xml").read_text()


@NEEDS_BF16
def test_bf16_runner_compiles_bf16_and_falls_back_to_f32_without_bf16(bf16_export, monkeypatch):
    xml = str(bf16_export / "model.xml")
    x = np.random.default_rng(0).random((BATCH, 3, 48, 48), dtype=np.float32)
    valid = np.ones((BATCH, 1, 48, 48), np.float32)
    with torch.no_grad():
        want = tiny(X2).net(torch.from_numpy(x)).numpy()
    with OvRunner(xml, threads=1, cache=False) as runner:
        fast = runner.infer(x, valid)
        assert runner.execution_precision == "bf16" and runner.describe()["execution_note"] is None
    no_bf16(monkeypatch)
    with OvRunner(xml, threads=1, cache=False) as runner:
        exact = runner.infer(x, valid)
        assert runner.execution_precision == "f32" and "avx512_bf16" in runner.describe()["execution_note"]
    assert float(np.abs(exact - want).max()) <= 1e-4  # f32 execution: fp32 parity
    assert 1e-4 < float(np.abs(fast - want).max()) <= 0.05  # bf16 execution: rounded, within the gate


@NEEDS_BF16
def test_failed_bf16_gate_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(verdicts, "BF16_MIN_PSNR", 200.0)  # unreachable for bf16 arithmetic
    with pytest.raises(NSRError, match="parity gate failed: OpenVINO bf16"):
        export(tiny(X2), tmp_path / "out", "openvino", ExportOptions(precision="bf16", patch_batch=BATCH, threads=1,
                                                                     show_progress=False))
    assert not (tmp_path / "out").exists()
    assert not [p for p in Path(tmp_path).iterdir() if p.name != "out"]  # no temp folder left either


def test_bench_lists_bf16_as_absent_with_why_without_it(monkeypatch):
    from nsr_deploy.bench.suites.precisions import precision_specs

    no_bf16(monkeypatch)
    specs, skipped = precision_specs(("torch", "openvino"), X2)
    assert "bf16" not in {s.precision for s in specs}
    assert "avx512_bf16" in skipped["openvino bf16"]
    json.dumps(skipped)


def test_kernel_mixing_multiply_adds_match_eq10_and_are_classified_as_mixing():
    """Eq. 10 as k broadcast Multiply-Adds (exporters/openvino_mixing.py) against numpy's einsum of the same
    softmax weights and kernels, and the graph classifier still names every step of it kernel mixing (the
    bf16 export keeps those ops f32 by that name)."""
    import openvino.opset1 as opset1
    import openvino.opset13 as ops

    from nsr_deploy.exporters.openvino.mixing import mix_kernels
    from nsr_deploy.exporters.openvino.op_roles import classify, routing_names

    n, d, k, f = 3, 4, 5, 7
    rng = np.random.default_rng(1)
    stacked = rng.standard_normal((d, k, f)).astype(np.float32)
    logits = ops.parameter([n, d, k], np.float32, name="logits")
    mixed = mix_kernels(opset1.softmax(logits, 2), stacked)
    model = ov.Model([mixed], [logits])
    feed = rng.standard_normal((n, d, k)).astype(np.float32) * 3
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"logits": feed})[0]
    gamma = np.exp(feed - feed.max(2, keepdims=True))
    gamma /= gamma.sum(2, keepdims=True)
    np.testing.assert_allclose(got, np.einsum("ndk,dkf->ndf", gamma, stacked), rtol=1e-5, atol=1e-6)
    ops_found = classify(model)
    mixing = {op.name for op in ops_found if op.role == "kernel_mixing"}
    assert len(mixing) == 2 * k - 1  # k products, k - 1 sums
    assert mixed.get_friendly_name() in mixing
    kept = set(routing_names(model, ops_found, ("softmax", "kernel_mixing")))
    assert mixing <= kept and any("Gather" in name for name in kept)  # the picks of each weight, too
