"""int8 for sparse models on OpenVINO (issue 18): the graph's f32 build (both layouts) matches the
PyTorch network, its per-patch convs really *execute* in int8 in the compiled model (runtime precisions,
oneDNN int8 primitives), the int8 output stays close to the independent float computation on a real
photo, the bundled denoiser passes the 0.1 dB task gate, and a failed gate writes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import decisive_net
from nsr_deploy.checks.task import read_images, task_of
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q
from nsr_deploy.exporters.openvino.quantize.sparse_int8 import build_int8_sparse_ir, calibrate, int8_execution
from nsr_deploy.exporters.openvino.quantize.split_graph import LAYOUTS, PATCH_SEP, Range, build_graph, weights_of
from nsr_deploy.models.checkpoint import LoadedModel, load_model

ov = pytest.importorskip("openvino")

TINY = NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=16, groups=4, cardinals=8, patch_size=24)
BATCH = 4
F32 = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}


@pytest.fixture(scope="module")
def tiny():
    net = decisive_net(TINY, 5, bias_std=0.05)
    return LoadedModel(net, "tiny", "built", "0" * 64, "tiny")


@pytest.fixture(scope="module")
def photo_tiles(data_dir, tiny):
    """Degraded tiles of real photos (CSet5), as the exporter calibrates on."""
    images = read_images(data_dir / "CSet5", 3)
    return q.calibration_tiles(images, task_of(tiny), TINY.patch_size, 4 * BATCH)


def _torch(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _run(model, x: np.ndarray):
    compiled = ov.Core().compile_model(model, "CPU", F32)
    y = compiled({"x": x, "valid": np.ones((x.shape[0], 1, *x.shape[2:]), np.float32)})[compiled.output("y")]
    return y, compiled


@pytest.mark.parametrize("layout", LAYOUTS)
def test_f32_graph_matches_pytorch(tiny, photo_tiles, layout):
    x = photo_tiles[:BATCH]
    y, _ = _run(build_graph(TINY, weights_of(tiny.net), BATCH, layout=layout), x)
    assert np.abs(y - _torch(tiny.net, x)).max() < 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_patch_convs_execute_int8_and_stay_close(tiny, photo_tiles, layout):
    convs = weights_of(tiny.net)
    ranges = calibrate(TINY, convs, photo_tiles, BATCH, threads=1)
    assert ranges["body.1.body.2"].lo >= 0 and ranges["body.1.body.0"].lo < 0  # ReLU input / residual stream
    x = photo_tiles[BATCH:2 * BATCH]
    y, compiled = _run(build_graph(TINY, convs, BATCH, ranges, layout=layout), x)
    runtime = [{"type": n.get_rt_info()["layerType"].astype(str),
                "precision": n.get_rt_info()["runtimePrecision"].astype(str),
                "primitive": n.get_rt_info()["primitiveType"].astype(str),
                "original": n.get_rt_info()["originalLayersNames"].astype(str).split(",")}
               for n in compiled.get_runtime_model().get_ordered_ops()]
    layers = [name for name, *_ in TINY.conv_shapes()]
    per_patch = [name for name, *_, sparse in TINY.conv_shapes() if sparse]
    execution = int8_execution(runtime, layers)
    assert execution["float"] == [] and set(per_patch) <= set(execution["int8"])
    for op in runtime:
        if op["type"] == "Convolution" and {n.split(PATCH_SEP)[0] for n in op["original"]} & set(per_patch):
            assert op["primitive"].lower().endswith("_i8"), op  # oneDNN's int8 kernel, not f32
    # against the independent float computation (PyTorch): int8 noise, not a wrong shift or sign
    ref = _torch(tiny.net, x)
    psnr = 10 * np.log10(1.0 / np.mean((y - ref) ** 2))
    assert psnr > 38, psnr


def test_signed_input_without_shift_would_run_float():
    """The reason for the shifted input: a run-time-weight conv on a signed FakeQuantize runs f32."""
    ops = pytest.importorskip("openvino.opset13")

    def fq(node, lo, hi, levels):
        lo, hi = ops.constant(np.float32(lo)), ops.constant(np.float32(hi))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    prims = {}
    for lo in (-1.0, 0.0):
        x = ops.parameter([1, 8, 12, 12], np.float32, name="x")
        w = ops.parameter([8, 8, 3, 3], np.float32, name="w")
        y = ops.convolution(fq(x, lo, 1.0, 256), fq(w, -0.5, 0.5, 255), [1, 1], [1, 1], [1, 1], [1, 1])
        compiled = ov.Core().compile_model(ov.Model([y], [x, w]), "CPU", F32)
        runtime = [n.get_rt_info() for n in compiled.get_runtime_model().get_ordered_ops()]
        prims[lo] = {i["primitiveType"].astype(str) for i in runtime if i["layerType"].astype(str) == "Convolution"}
    assert all(p.lower().endswith("_i8") for p in prims[0.0]), prims
    assert not any(p.lower().endswith("_i8") for p in prims[-1.0]), prims


def test_range_keeps_zero_on_the_grid():
    lo, hi = Range(-0.3, 0.71).aligned()
    step = (hi - lo) / 255
    assert lo <= -0.3 and hi >= 0.71 - 1e-6 and abs(lo / step - round(lo / step)) < 1e-6


def test_bundled_denoiser_passes_the_task_gate(tmp_path):
    built = build_int8_sparse_ir(load_model("denoise-s25"), tmp_path / "out", threads=1)
    path, final = built.path, built.report["attempts"][-1]
    assert built.gate.passed
    assert path.exists() and path.with_suffix(".bin").exists()
    assert final["passed"] and final["drop_db"] <= 0.1 and final["unexpected_float"] == []
    assert final["int8_layers"] == len(load_model("denoise-s25").config.conv_shapes()) - len(final["kept_float"])


def test_failed_gate_writes_nothing_and_its_attempts_lived_in_a_marked_scratch_folder(tiny, tmp_path, data_dir):
    """Each attempt's IR is written under a marked scratch folder beside OUT (what a later export finds and
    cleans after a kill), never in the system temp folder; a failed gate leaves nothing anywhere."""
    import tempfile

    from nsr_deploy.exporters.openvino.quantize.sparse_int8 import _save_f32
    from nsr_deploy.exporters.output_folder import MARKER

    out, saved = tmp_path / "out", []

    def save(model, path):
        saved.append((path, (path.parent.parent / MARKER).is_file()))
        _save_f32(model, path)

    before = set(Path(tempfile.gettempdir()).iterdir())
    with pytest.raises(NSRError, match="gate failed"):
        build_int8_sparse_ir(tiny, out, calib=str(data_dir / "CSet5"), gate_images=str(data_dir / "CSet5"),
                             patch_batch=BATCH, threads=1, tolerance=-1.0, save=save)
    assert len(saved) == 2  # every conv int8, then the image-facing layers float
    for path, marked in saved:
        assert marked and path.parent.parent.parent == tmp_path and path.parent.parent.name.startswith(".out.")
    assert not list(tmp_path.iterdir())  # no OUT, no scratch folder left
    assert not {p for p in set(Path(tempfile.gettempdir()).iterdir()) - before if p.name.startswith("nsr-int8")}


def test_export_auto_int8_of_a_sparse_model_takes_the_per_patch_int8_path(tmp_path, data_dir):
    """`export --target openvino --precision int8` with the default form: a sparse model's IR is the
    graph with every conv int8 (not NNCF's, which leaves the per-patch convs float), task-gated, and it
    restores a real photo close to the fp32 PyTorch reference."""
    from click.testing import CliRunner
    from PIL import Image

    from nsr_deploy.cli import main
    from nsr_deploy.runtimes import load

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["export", "sr-x2", "--target", "openvino", "--precision", "int8",
                                    "--threads", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "nsr.json").read_text())
    entry, gate = doc["targets"]["openvino"], doc["parity"]["openvino/int8"]
    assert entry["conv_form"] == "folded" and entry["int8"]["form"].startswith("split int8")
    final = entry["int8"]["attempts"][-1]
    assert gate["passed"] and final["passed"] and final["drop_db"] <= 0.1 and final["unexpected_float"] == []
    assert final["int8_layers"] >= 2 * load_model("sr-x2").config.num_blocks  # the per-patch convs among them
    lr = np.asarray(Image.open(sorted((data_dir / "CSet5").iterdir())[0]).convert("RGB"))[:96, :96]
    with load(out, threads=1) as engine, load("sr-x2", backend="torch", threads=1) as reference:
        got, want = engine.restore(lr).astype(float), reference.restore(lr).astype(float)
    assert 10 * np.log10(255 ** 2 / np.mean((got - want) ** 2)) > 40


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_model_gives_the_same_ir_bytes_twice_in_one_process(tiny, tmp_path, layout):
    """OpenVINO names unnamed nodes from a process-wide counter: the graph is named by its own order, so
    an int8 export is a function of the checkpoint, first build in a process or second."""
    convs = weights_of(tiny.net)
    ranges = {name: Range(-1.0, 2.0) for name in convs}
    files = []
    for i in range(2):
        path = tmp_path / f"{i}.xml"
        ov.save_model(build_graph(TINY, convs, BATCH, ranges, layout=layout), str(path), compress_to_fp16=False)
        files.append((path.read_bytes(), path.with_suffix(".bin").read_bytes()))
    assert files[0] == files[1]
