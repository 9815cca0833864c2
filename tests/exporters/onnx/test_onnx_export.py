"""ONNX export: every conv form reproduces the reference; graph structure; determinism; errors."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.exporters.onnx import graph as onnx_graph
from nsr_deploy.exporters.pipeline import export_onnx
from nsr_deploy.models.checkpoint import LoadedModel, save_reference_checkpoint
from nsr_deploy.models.network import NSRNet
from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner


def make_loaded(cfg: NSRConfig, seed: int = 0) -> LoadedModel:
    return LoadedModel(decisive_net(cfg, seed, bias_std=0.05), "test", "built", "0" * 64, "test")


def reference_patches(cfg, n, size, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, cfg.channels, size, size)).astype(np.float32)
    x *= rng.uniform(0.2, 1.0, (n, 1, 1, 1)).astype(np.float32)  # patches differ in their statistics
    return x


# Covers sparse and dense, scales 1-4, grey and colour, k in {1, 2, 4}, d in {1, 4, 16}.
CONFIGS = [
    NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=16, groups=4, cardinals=16),
    NSRConfig(channels=1, scale=1, num_blocks=1, units=8, block_width=12, groups=2, cardinals=4),
    NSRConfig(channels=3, scale=3, num_blocks=1, units=8, block_width=8, groups=1, cardinals=1),
    NSRConfig(channels=1, scale=4, num_blocks=1, units=16, block_width=32, groups=4, cardinals=4),
    NSRConfig(channels=3, scale=1, num_blocks=1, units=16, block_width=16, groups=2, cardinals=16),
    NSRConfig(channels=1, scale=2, num_blocks=1, units=8, block_width=8, groups=1, cardinals=4),
    NSRConfig.create(channels=3, scale=4, num_blocks=2, units=8, width_multiplier=2, sparse=False),
    NSRConfig.create(channels=1, scale=1, num_blocks=1, units=8, width_multiplier=1, sparse=False),
]


def nchwc_ok(cfg):
    from nsr_deploy.exporters.onnx.nchwc import mlas_block_size, unsupported_reason

    return unsupported_reason(cfg, mlas_block_size()) is None


NCHWC_CONFIGS = [  # widths that are multiples of any NCHWc block size (8 or 16)
    NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=32, groups=4, cardinals=16),
    NSRConfig(channels=1, scale=3, num_blocks=1, units=16, block_width=16, groups=1, cardinals=1),
    NSRConfig.create(channels=1, scale=1, num_blocks=1, units=16, width_multiplier=2, sparse=False),
]
# Dense models have no sparse conv: one portable form covers them.
CASES = [(form, cfg) for cfg in CONFIGS for form in (["grouped", "matmul", "dense-mix"] if cfg.sparse else ["grouped"])]
CASES += [("nchwc", cfg) for cfg in NCHWC_CONFIGS]


@pytest.mark.parametrize("form,cfg", CASES,
                         ids=[f"{f}-{c.kind}-x{c.scale}-c{c.channels}-k{c.groups}-d{c.cardinals}" for f, c in CASES])
def test_every_form_reproduces_the_reference(tmp_path, form, cfg):
    if form == "nchwc" and not nchwc_ok(cfg):
        pytest.skip("this machine's ONNX Runtime has no NCHWc kernels")
    loaded = make_loaded(cfg)
    batch = 3
    model = onnx_graph.build_onnx(loaded, form, batch if form in ("grouped", "nchwc") else None)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    size = 20
    x = reference_patches(cfg, batch, size)
    with torch.no_grad():
        want = loaded.net(torch.from_numpy(x)).numpy()
    with OrtRunner(str(path)) as runner:
        got = runner.infer(x, np.ones((batch, 1, size, size), np.float32))
    assert got.shape == (batch, cfg.channels, size * cfg.scale, size * cfg.scale)
    assert np.abs(got - want).max() <= 1e-4


def _producers(graph):
    return {out: node for node in graph.node for out in node.output}


def _reaches(graph, name, op_type, producers, depth=12):
    """Does tensor ``name`` come (within ``depth`` nodes) from a node of ``op_type``?"""
    frontier = [name]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            node = producers.get(t)
            if node is None:
                continue
            if node.op_type == op_type:
                return True
            nxt += list(node.input)
        frontier = nxt
    return False


@pytest.mark.parametrize("form", ["grouped", "matmul", "nchwc"])
def test_only_the_per_patch_conv_has_runtime_weights_and_mixing_is_matmul(form):
    cfg = CONFIGS[0]
    if form == "nchwc" and not nchwc_ok(cfg):
        pytest.skip("this machine's ONNX Runtime has no NCHWc kernels")
    model = onnx_graph.build_onnx(make_loaded(cfg), form, 4 if form in ("grouped", "nchwc") else None)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = _producers(g)
    n_sparse = 2 * cfg.num_blocks
    runtime_conv_weights = [n for n in g.node if n.op_type in ("Conv", "Gemm") and n.input[1] not in inits]
    if form in ("grouped", "nchwc"):
        assert len(runtime_conv_weights) == n_sparse
        for node in runtime_conv_weights:
            assert node.op_type == "Conv"
            assert _reaches(g, node.input[1], "MatMul", producers)  # weights come from the mixing
            group = next(a.i for a in node.attribute if a.name == "group")
            assert group == 4
    else:
        assert runtime_conv_weights == []
    # one mixing MatMul per sparse conv, against stacked kernels [d, k, F]
    mixing = [n for n in g.node if n.op_type == "MatMul" and n.input[1] in inits and inits[n.input[1]].ndim == 3]
    if form == "nchwc":  # kernels mixed straight into the blocked layout [O/B, rows, F], biases [d, k, out/d]
        assert len(mixing) == 2 * n_sparse
        biases = [n for n in mixing if inits[n.input[1]].shape[:2] == (cfg.cardinals, cfg.groups)]
        assert len(biases) == n_sparse
    else:
        assert len(mixing) == n_sparse
        for node in mixing:
            d, k, _ = inits[node.input[1]].shape
            assert (d, k) == (cfg.cardinals, cfg.groups)
    assert sum(n.op_type == "Softmax" for n in g.node) == n_sparse


def test_dynamic_forms_take_any_batch_and_size(tmp_path):
    cfg = CONFIGS[1]
    loaded = make_loaded(cfg)
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_graph.build_onnx(loaded, "matmul", None).SerializeToString())
    with OrtRunner(str(path)) as runner:
        assert runner.static_batch is None
        for n, h, w in [(1, 7, 13), (5, 48, 48), (2, 1, 1)]:
            x = np.random.default_rng(n).uniform(0, 1, (n, 1, h, w)).astype(np.float32)
            with torch.no_grad():
                want = loaded.net(torch.from_numpy(x)).numpy()
            assert np.abs(runner.infer(x, np.ones((n, 1, h, w), np.float32)) - want).max() <= 1e-4


def test_export_writes_manifest_and_is_byte_identical(tmp_path):
    loaded = make_loaded(CONFIGS[1])
    m1 = export_onnx(loaded, tmp_path / "a", "grouped", 4, show_progress=False)
    export_onnx(loaded, tmp_path / "b", "grouped", 4, show_progress=False)
    for name in ("model.onnx", "model-b1.onnx"):  # the fixed-batch model and its batch-1 twin
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert m1["io"]["static_batch"] == 4 and m1["conv_form"] == "grouped"
    assert [i["name"] for i in m1["io"]["inputs"]] == ["x", "valid"]
    assert m1["parity"]["onnxruntime/fp32"]["passed"]
    assert {c["check"] for c in m1["parity"]["onnxruntime/fp32"]["checks"]} == {"random_patches", "real_image",
                                                                               "batch_one_patches"}
    assert m1["source"]["sha256"] == "0" * 64 and m1["opset"] == 17
    assert m1["tools"]["onnxruntime"] and m1["tools"]["torch"]
    onnx.checker.check_model(str(tmp_path / "a" / "model.onnx"), full_check=True)


def test_failed_gate_leaves_nothing(tmp_path, monkeypatch):
    import nsr_deploy.checks.verdicts as parity

    monkeypatch.setattr(parity, "FP32_MAX_ABS", 0.0)  # nothing passes a zero tolerance
    loaded = make_loaded(CONFIGS[1])
    from nsr_deploy.core.errors import NSRError

    with pytest.raises(NSRError, match="parity gate failed"):
        export_onnx(loaded, tmp_path / "out", "matmul", None, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nsr_deploy.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_inputs_exit_2_and_leave_no_output(tmp_path):
    ckpt = tmp_path / "c.pt"
    save_reference_checkpoint(NSRNet(CONFIGS[1], weight_norm=True), ckpt)
    out = tmp_path / "out"
    cases = [
        ("export", str(tmp_path / "missing.pt"), "-o", str(out)),
        ("export", str(ckpt), "-o", str(out), "--opset", "9"),
        ("export", str(ckpt), "-o", "/proc/nsr-deploy-cannot-write/out"),
    ]
    for args in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_cli_export_refuses_to_overwrite(tmp_path):
    ckpt = tmp_path / "c.pt"
    save_reference_checkpoint(NSRNet(CONFIGS[1], weight_norm=True), ckpt)
    out = tmp_path / "out"
    assert _cli("export", str(ckpt), "-o", str(out), "--conv-form", "matmul").returncode == 0
    first = (out / "model.onnx").read_bytes()
    proc = _cli("export", str(ckpt), "-o", str(out))
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "model.onnx").read_bytes() == first
    assert _cli("export", str(ckpt), "-o", str(out), "--force", "--conv-form", "grouped").returncode == 0
    assert (out / "model.onnx").read_bytes() != first  # replaced by the grouped form


def test_auto_decides_by_rule_and_ships_a_portable_model(tmp_path):
    sparse, dense = NCHWC_CONFIGS[0], CONFIGS[6]
    m = export_onnx(make_loaded(sparse), tmp_path / "s", "auto", 4, show_progress=False)
    target = m["targets"]["onnx"]
    assert target["conv_form"] == "grouped" and "rule" in target["auto"] and "candidates" not in target["auto"]
    model = onnx.load(str(tmp_path / "s" / "model.onnx"))
    assert {o.domain for o in model.opset_import} == {""} and {n.domain for n in model.graph.node} <= {""}
    assert model.ir_version == 8 and target["ir_version"] == 8  # opset 17's IR: ONNX Runtime >= 1.13 reads it
    assert any("Node.js" in p["where"] for p in m["runs_on"]["onnx"]["verified"])
    m = export_onnx(make_loaded(dense), tmp_path / "d", "auto", 4, show_progress=False)
    assert m["targets"]["onnx"]["conv_form"] == "matmul" and m["io"]["static_batch"] is None


def test_nchwc_is_not_an_export_form(tmp_path):
    from nsr_deploy.core.errors import NSRError

    with pytest.raises(NSRError, match="portable"):
        export_onnx(make_loaded(NCHWC_CONFIGS[0]), tmp_path / "n", "nchwc", 4, show_progress=False)
    assert not (tmp_path / "n").exists()


def test_tune_times_the_portable_forms_and_records_it(tmp_path):
    loaded = make_loaded(NCHWC_CONFIGS[0])
    m = export_onnx(loaded, tmp_path / "tune", "tune", 4, show_progress=False)
    target = m["targets"]["onnx"]
    report = target["tune"]["candidates"]
    assert set(report) == {"grouped", "matmul", "dense-mix"} and target["tune"]["machine_specific"]
    ok = {f: r["ms"] for f, r in report.items() if r["status"] == "ok"}
    assert target["conv_form"] == min(ok, key=ok.get)  # the fastest of those that passed
    assert m["parity"]["onnxruntime/fp32"]["passed"] and target["portable"]
    with OrtRunner(str(tmp_path / "tune" / "model.onnx")) as runner:
        x = reference_patches(NCHWC_CONFIGS[0], 4, 16)
        with torch.no_grad():
            want = loaded.net(torch.from_numpy(x)).numpy()
        assert np.abs(runner.infer(x, np.ones((4, 1, 16, 16), np.float32)) - want).max() <= 1e-4
