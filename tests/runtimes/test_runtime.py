"""Runtime API: engines on real images against the PyTorch reference, tiling modes, odd sizes,
thread safety, no torch at run time, bounded memory."""

import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import data_image, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel, save_native
from nsr_deploy.models.reference import reference_forward
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.host.tiling import cells_plan, exact_plan, reference_plan

SPARSE = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
GREY_DENSE = NSRConfig.create(channels=1, scale=1, num_blocks=2, units=8, width_multiplier=1, sparse=False)


def _net(cfg, seed=0):
    return decisive_net(cfg, seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(config name, form): export folder} plus the native checkpoints."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for name, cfg in (("sparse", SPARSE), ("dense", GREY_DENSE)):
        net = _net(cfg)
        save_native(net, root / name, {"name": name})
        loaded = LoadedModel(net, str(root / f"{name}.safetensors"), "native", "0" * 64, name)
        forms = ("matmul", "grouped") if cfg.sparse else ("matmul",)
        for form in forms:
            opts = ExportOptions(conv_form=form, patch_batch=5, show_progress=False)
            export(loaded, root / f"{name}-{form}", "onnx", opts)
            out[(name, form)] = root / f"{name}-{form}"
        out[name] = net
    return out


def reference_uint8(net, img):
    x = torch.from_numpy(img.astype(np.float32) / 255.0)
    x = x[None, None] if img.ndim == 2 else x.permute(2, 0, 1)[None]
    y = reference_forward(net, x)[0]
    y = y[0] if img.ndim == 2 else y.permute(1, 2, 0)
    return np.clip(np.rint(y.numpy() * 255.0), 0, 255).astype(np.uint8)


# Every backend of the capability table against the reference on real photos: tests/test_conformance.py
# (the grouped form there). Here: the dynamic-batch matmul form, on a larger photo too.
@pytest.mark.parametrize("index", [0, 2])  # baby 512x512 (tiled), butterfly 256x256 (tiled)
def test_matmul_form_on_real_images_matches_reference_within_one_level(exported, index):
    img = data_image("CSet5", index)
    want = reference_uint8(exported["sparse"], img)
    with load(exported[("sparse", "matmul")], backend="onnxruntime") as engine:
        got = engine.restore(img)
        assert engine.last_stats["tiling"] == "reference" and engine.last_stats["windows"] > 1
    assert got.shape == (img.shape[0] * 2, img.shape[1] * 2, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_grey_dense_model_on_bsd68(exported):
    img = data_image("BSD68", 0)
    want = reference_uint8(exported["dense"], img)
    with load(exported[("dense", "matmul")]) as engine:
        got = engine.restore(img)
    assert got.shape == img.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (193, 47), (197, 211), (211, 389)])
@pytest.mark.parametrize("tiling", ["reference", "cells"])
def test_odd_sizes_give_exactly_scale_times_size(exported, hw, tiling):
    rng = np.random.default_rng(hw[0])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    with load(exported[("sparse", "grouped")], tiling=tiling) as engine:
        out = engine.restore(img)
    assert out.shape == (hw[0] * 2, hw[1] * 2, 3) and out.dtype == np.uint8


def test_float_input_returns_float(exported):
    img = np.random.default_rng(0).uniform(0, 1, (30, 20, 3)).astype(np.float32)
    with load(exported[("sparse", "matmul")]) as engine:
        out = engine.restore(img)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    want = reference_forward(exported["sparse"], x)[0].permute(1, 2, 0).numpy()
    assert out.dtype == np.float32 and np.abs(out - want).max() <= 1e-4


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 260), w=st.integers(1, 260), seed=st.integers(0, 2**16), smooth=st.booleans())
def test_property_reference_tiling_equals_pytorch(exported, h, w, seed, smooth):
    rng = np.random.default_rng(seed)
    if smooth:
        base = rng.integers(0, 256, (max(1, h // 16 + 1), max(1, w // 16 + 1), 3)).astype(np.float32)
        img = np.kron(base, np.ones((16, 16, 1)))[:h, :w].astype(np.uint8)
    else:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    with load(exported[("sparse", "matmul")]) as engine:
        got = engine.restore(img)
    want = reference_uint8(exported["sparse"], img)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_threads_give_the_serial_result(exported):
    imgs = [data_image("CSet5", i)[:200, :200] for i in range(4)]
    with load(exported[("sparse", "matmul")], threads=1, tiling="cells") as engine:
        serial = [engine.restore(im) for im in imgs]
        results = [None] * 8

        def work(i):
            results[i] = engine.restore(imgs[i % 4])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, res in enumerate(results):
        assert np.array_equal(res, serial[i % 4])


def test_runtime_needs_no_torch(exported):
    folder = exported[("sparse", "grouped")]
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from nsr_deploy.runtimes import load\n"
        f"e = load({str(folder)!r}, backend='onnxruntime')\n"
        "out = e.restore(np.full((40, 30, 3), 128, np.uint8))\n"
        "assert out.shape == (80, 60, 3)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bare_onnx_file_carries_its_contract(exported, tmp_path):
    src = exported[("sparse", "matmul")] / "model.onnx"
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(src.read_bytes())
    with load(lone) as engine:
        assert engine.config == SPARSE
        assert engine.restore(np.zeros((9, 9, 3), np.uint8)).shape == (18, 18, 3)


def test_plans_compute_budget_and_coverage():
    for h, w in [(192, 192), (241, 241), (256, 256), (288, 352), (321, 481), (1000, 750)]:
        cells = cells_plan(h, w, 48)
        assert cells.compute_ratio <= 1.3
        assert reference_plan(h, w, 48).compute_ratio > 2.0
        cover = np.zeros((h, w), int)
        for t in cells.tiles:
            cover[t.y + t.ky0:t.y + t.ky1, t.x + t.kx0:t.x + t.kx1] += 1
        assert cover.min() == 1 and cover.max() == 1  # every pixel computed exactly once
    assert cells_plan(150, 900, 48).whole_image  # a side below 4 patches: the reference pools it whole


def test_cells_windows_stay_inside_the_image_unless_asked_to_reflect():
    """Clamped windows: no padding, so every conv zero-pads at the image edge as on a whole image."""
    for h, w in [(192, 192), (241, 241), (321, 481), (1000, 750)]:
        clamped, reflected = cells_plan(h, w, 48), cells_plan(h, w, 48, border="reflect")
        assert clamped.pad == 0 and reflected.pad >= 3
        assert (clamped.window_h, clamped.window_w) == (reflected.window_h, reflected.window_w)
        for t in clamped.tiles:
            assert 0 <= t.y <= h - clamped.window_h and 0 <= t.x <= w - clamped.window_w
        kept = {(t.y + t.ky0, t.x + t.kx0, t.y + t.ky1, t.x + t.kx1) for t in clamped.tiles}
        assert kept == {(t.y + t.ky0, t.x + t.kx0, t.y + t.ky1, t.x + t.kx1) for t in reflected.tiles}
    with pytest.raises(ValueError, match="border"):
        cells_plan(256, 256, 48, border="zero")


def _computed_with_padding(plan, batch: int) -> int:
    return math.ceil(len(plan.tiles) / batch) * batch * plan.window_h * plan.window_w


def test_cells_fill_a_fixed_batch_engines_calls():
    for h, w in [(512, 512), (256, 256), (1000, 750), (321, 481), (720, 1280)]:
        free, fixed = cells_plan(h, w, 48), cells_plan(h, w, 48, batch=16)
        assert _computed_with_padding(fixed, 16) <= _computed_with_padding(free, 16)
        assert min(fixed.window_h, fixed.window_w) >= 48 + 6
        cover = np.zeros((h, w), int)
        for t in fixed.tiles:
            cover[t.y + t.ky0:t.y + t.ky1, t.x + t.kx0:t.x + t.kx1] += 1
        assert cover.min() == 1 and cover.max() == 1
    # 512x512: 7x7 cells would be 49 windows of 80x80 in 4 calls, the last padded with 15 copies
    fixed = cells_plan(512, 512, 48, batch=16)
    assert len(fixed.tiles) == 64 and _computed_with_padding(fixed, 16) < 0.8 * _computed_with_padding(
        cells_plan(512, 512, 48), 16)


def test_exact_tiling_of_dense_models_equals_whole_image(exported):
    net = exported["dense"]
    img = data_image("BSD68", 1)  # 481x321 grey
    radius = GREY_DENSE.receptive_radius()
    plan = exact_plan(*img.shape, radius, window_pixels=120 * 120)
    assert len(plan.tiles) > 9 and plan.window_h * plan.window_w <= 120 * 120
    with load(exported[("dense", "matmul")]) as engine:
        engine.plan = lambda h, w: exact_plan(h, w, radius, window_pixels=120 * 120)
        tiled = engine.restore(img.astype(np.float32) / 255)
    x = torch.from_numpy(img.astype(np.float32) / 255)[None, None]
    whole = reference_forward(net, x)[0, 0].numpy()
    assert np.abs(tiled - whole).max() <= 1e-5


def _old_exact_plan_pixels(h: int, w: int, radius: int, tile: int = 192) -> int:
    """What dense models computed before plans followed the memory budget: tiles of at most 192 pixels,
    each window carrying its receptive field."""
    if h <= tile + 2 * radius and w <= tile + 2 * radius:
        return h * w
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    return rows * cols * min(h, math.ceil(h / rows) + 2 * radius) * min(w, math.ceil(w / cols) + 2 * radius)


def test_dense_plans_compute_each_pixel_once_when_the_image_fits():
    """An image whose whole-image call fits the window budget runs whole (1.0x the pixels); a larger one in
    the fewest, largest windows: never more pixels than 192-pixel tiles, and within 1.2x once windows of
    32 receptive radii fit (a 4000x3000 photo in windows of 2 megapixels: 1.07x)."""
    radius = 21  # a 16-block dense WDSR
    rng = np.random.default_rng(3)
    sizes = [(480, 400), (4000, 3000), (601, 599), (2000, 90)] + [tuple(rng.integers(60, 3000, 2)) for _ in range(40)]
    for h, w in sizes:
        h, w = int(h), int(w)
        assert exact_plan(h, w, radius, window_pixels=h * w).whole_image
        for budget in (250_000, 300_000, 2_000_000):
            plan = exact_plan(h, w, radius, window_pixels=budget)
            assert plan.window_h * plan.window_w <= budget
            assert plan.pixels_computed <= _old_exact_plan_pixels(h, w, radius), (h, w, budget)
            cover = np.zeros((h, w), np.int8)
            for t in plan.tiles:
                assert 0 <= t.y and t.y + plan.window_h <= h and 0 <= t.x and t.x + plan.window_w <= w
                # every kept pixel has its whole receptive field inside the window, or the image edge
                assert t.ky0 >= radius or t.y == 0
                assert t.kx0 >= radius or t.x == 0
                assert plan.window_h - t.ky1 >= radius or t.y + plan.window_h == h
                assert plan.window_w - t.kx1 >= radius or t.x + plan.window_w == w
                cover[t.y + t.ky0:t.y + t.ky1, t.x + t.kx0:t.x + t.kx1] += 1
            assert cover.min() == 1 and cover.max() == 1
            if budget >= (32 * radius) ** 2:
                assert plan.compute_ratio <= 1.2, (h, w, budget, plan.compute_ratio)
    assert exact_plan(4000, 3000, radius, window_pixels=2_000_000).compute_ratio < 1.08
    # an engine's largest window (TensorRT's profile, ExecuTorch's --max-side) bounds the windows too
    bounded = exact_plan(480, 400, radius, max_side=(234, 234))
    assert bounded.window_h <= 234 and bounded.window_w <= 234


def test_dense_engine_runs_a_whole_image_the_budget_holds(exported, monkeypatch):
    """The engine sizes dense windows from the memory budget: 480x400 runs whole at a generous budget, and
    at a budget that cannot hold it in fewer, larger windows than before, inside the budget."""
    from nsr_deploy.core.budgets import set_max_memory

    img = np.random.default_rng(0).integers(0, 256, (480, 400), dtype=np.uint8)
    radius = GREY_DENSE.receptive_radius()
    with load(exported[("dense", "matmul")], threads=1) as engine:
        whole = engine.restore(img)
        assert engine.last_stats["compute_ratio"] == 1.0 and engine.last_stats["windows"] == 1
        per_pixel = engine._bytes_per_window_pixel()
        try:
            set_max_memory(engine._image_bytes(480, 400) + 2 * 150 * 150 * per_pixel)
            tiled = engine.restore(img)
            stats = engine.last_stats
            assert stats["windows"] > 1 and stats["window"][0] * stats["window"][1] <= 150 * 150
            assert engine.memory_needed(480, 400) <= engine._image_bytes(480, 400) + 2 * 150 * 150 * per_pixel
        finally:
            set_max_memory(None)
    assert stats["compute_ratio"] < _old_exact_plan_pixels(480, 400, radius, 64) / (480 * 400)
    assert np.array_equal(tiled, whole)


def test_large_image_streams_in_bounded_memory(exported, tmp_path):
    """4000x3000 at x2 through bounded patch batches: peak RSS of the whole process under 3 GiB."""
    folder = exported[("sparse", "matmul")]
    code = (
        "import resource, sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from nsr_deploy.runtimes import load\n"
        "img = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)\n"
        f"e = load({str(folder)!r}, tiling='cells', tile_batch=64)\n"
        "out = e.restore(img)\n"
        "assert out.shape == (6000, 8000, 3)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.strip())
    assert peak_kib < 3 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
