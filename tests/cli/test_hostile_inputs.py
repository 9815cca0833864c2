"""Hostile files and bad input, tried as an attacker would: every case must end in the README's promise,
one ``error:`` line and exit 2 (1 for a folder with some bad files), no traceback, in bounded time and
memory, with nothing written or deleted outside the intended output.

Every hostile file is generated here. Cases whose danger is time or memory run the CLI in a subprocess
under RLIMIT_AS and a timeout; the others run in-process (click's runner) to keep the suite fast.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import assert_one_error, changes, invoke, png_bytes, run_limited, snapshot
from PIL import Image

from conftest import ROOT, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.exporters.output_folder import MARKER, atomic_output
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel, save_native, save_reference_checkpoint
from nsr_deploy.runtimes import backend_unavailable

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
HAVE_OPENVINO = backend_unavailable("openvino") is None


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny reference checkpoint, its state dict, a native model and an export folder of it."""
    root = tmp_path_factory.mktemp("tiny")
    net = decisive_net(TINY)
    save_reference_checkpoint(net, root / "tiny.pt")
    save_native(net, root / "native", {"name": "native"})
    loaded = LoadedModel(net, str(root / "tiny.pt"), "reference", "0" * 64, "tiny")
    target = "openvino" if HAVE_OPENVINO else "onnx"
    export(loaded, root / "export", target, ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    state = torch.load(root / "tiny.pt", weights_only=True)["model_state_dict"]
    return {"root": root, "ckpt": root / "tiny.pt", "native": root / "native", "export": root / "export",
            "state": state}


@pytest.fixture
def work(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 18, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    return tmp_path


# -- images ----------------------------------------------------------------------------------------
def test_decompression_bomb_header_is_refused_in_milliseconds(work):
    (work / "bomb.png").write_bytes(png_bytes(100_000, 100_000))  # 69 bytes asking for 30 GB
    before = snapshot(work)
    code, err, seconds = run_limited(["restore", "bomb.png", "-o", "out.png"], work)
    assert_one_error(code, err, 2, "pixel budget")
    assert seconds < 30 and changes(before, snapshot(work)) == []


def test_pixel_budget_from_option_and_environment(work, monkeypatch):
    monkeypatch.setenv("NSR_MAX_PIXELS", "40000000")  # --max-pixels sets it for child processes: undone after
    before = snapshot(work)
    res = invoke(["restore", "a.png", "-o", "out.png", "--max-pixels", "100"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "20x24")
    res = invoke(["restore", "a.png", "-o", "out.png"], work, env={"NSR_MAX_PIXELS": "479"})
    assert_one_error(res.exit_code, res.stderr, 2, "pixel budget (0.000479 Mpx)")
    res = invoke(["restore", "a.png", "-o", "out.png"], work, env={"NSR_MAX_PIXELS": "lots"})
    assert_one_error(res.exit_code, res.stderr, 2, "NSR_MAX_PIXELS")
    assert changes(before, snapshot(work)) == []
    res = invoke(["restore", "a.png", "-o", "out.png"], work, env={"NSR_MAX_PIXELS": "480"})  # exactly 20x24
    assert res.exit_code == 0, res.stderr
    assert Image.open(work / "out.png").size == (40, 48)


def test_folder_run_reports_every_bad_file_goes_on_and_writes_json(work):
    folder = work / "in"
    folder.mkdir()
    shutil.copy(work / "a.png", folder / "1-good.png")
    (folder / "2-bomb.png").write_bytes(png_bytes(100_000, 100_000))
    (folder / "3-garbage.png").write_bytes(b"not an image at all")
    (folder / "4-truncated.png").write_bytes((work / "a.png").read_bytes()[:60])
    shutil.copy(work / "b.png", folder / "5-good.png")
    before = snapshot(work)
    res = invoke(["restore", "in", "-o", "out", "--json"], work)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    report = json.loads(res.stdout)
    assert [Path(i["input"]).name for i in report["images"]] == sorted(p.name for p in folder.iterdir())
    assert [i["ok"] for i in report["images"]] == [True, False, False, False, True] and report["failed"] == 3
    assert "pixel budget" in report["images"][1]["error"]
    assert sorted(p.name for p in (work / "out").iterdir()) == ["1-good.png", "5-good.png"]
    assert changes(before, snapshot(work), ("out",)) == []
    res = invoke(["restore", "in", "-o", "out2"], work)  # without --json: one error line per bad file
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 3


def test_single_unreadable_image_exits_2(work):
    (work / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    before = snapshot(work)
    res = invoke(["restore", "bad.png", "-o", "out.png"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "bad.png")
    assert changes(before, snapshot(work)) == []


def test_sixteen_bit_rgb_is_warned_and_outputs_keep_the_umask(work):
    rows = b"".join(b"\x00" + np.full(8 * 3, 40000, ">u2").tobytes() for _ in range(8))
    (work / "deep.png").write_bytes(png_bytes(8, 8, depth=16, colour=2, rows=rows))
    old = os.umask(0o022)
    try:
        res = invoke(["restore", "deep.png", "-o", "out.png"], work)
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.stderr
    assert "warning: deep.png: 16-bit RGB input converted to 8-bit" in res.stderr
    assert (work / "out.png").stat().st_mode & 0o777 == 0o644


def test_output_file_for_several_inputs_and_bad_suffix_are_refused_before_loading(work):
    before = snapshot(work)
    res = invoke(["restore", "a.png", "b.png", "-o", "one.png"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "one.png")
    t0 = time.perf_counter()
    res = invoke(["restore", "a.png", "-o", "outdir", "--suffix", ".exe", "-m", "no-such-model"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "--suffix")  # the model (missing) was never looked at
    assert time.perf_counter() - t0 < 5
    assert changes(before, snapshot(work)) == []


# -- checkpoints -------------------------------------------------------------------------------------
def _hostile_state(tiny, kind: str) -> dict:
    state = dict(tiny["state"])
    bias = state["body.0.bias"]
    if kind == "stride0":  # 4 bytes of storage declaring 360 GB
        state["body.0.weight_v"] = torch.zeros(1).expand(100_000, 100_000, 3, 3)
    elif kind == "inflated":  # a real storage far smaller than the shape, through set_
        state["body.0.weight_v"] = torch.empty(0).set_(torch.zeros(8).untyped_storage(), 0, (8, 3, 3, 3), (1, 0, 0, 0))
    elif kind == "int_key":
        state[7] = bias.clone()
    elif kind == "sparse":
        state["body.0.bias"] = bias.to_sparse()
    elif kind == "integer":
        state["body.0.bias"] = bias.long()
    elif kind == "zero_size":
        state["body.0.bias"] = torch.zeros(0, 8)
    elif kind == "nan":
        state["body.1.body.0.bias"] = state["body.1.body.0.bias"].clone().fill_(float("nan"))
    elif kind == "inf":
        state["body.0.weight_g"] = state["body.0.weight_g"].clone().fill_(float("inf"))
    elif kind == "shape":
        state["body.0.bias"] = torch.zeros(9)
    return {"model_state_dict": state}


CHECKPOINT_CASES = {"stride0": "storage", "inflated": "storage", "int_key": "int key", "sparse": "sparse",
                    "integer": "int64", "zero_size": "empty", "nan": "body.1.body.0.bias",
                    "inf": "body.0.weight", "shape": "body.0.bias"}


@pytest.mark.parametrize("kind", ["stride0", "inflated"])
def test_checkpoint_with_inflated_tensor_sizes_is_refused_in_bounded_memory(tiny, tmp_path, kind):
    torch.save(_hostile_state(tiny, kind), tmp_path / "evil.pt")
    assert (tmp_path / "evil.pt").stat().st_size < 64 * 1024
    code, err, seconds = run_limited(["inspect", "evil.pt"], tmp_path)
    assert_one_error(code, err, 2, CHECKPOINT_CASES[kind])
    assert seconds < 60


@pytest.mark.parametrize("kind", ["int_key", "sparse", "integer", "zero_size", "nan", "inf", "shape"])
def test_malformed_checkpoint_is_one_error_line(tiny, tmp_path, kind):
    torch.save(_hostile_state(tiny, kind), tmp_path / "evil.pt")
    before = snapshot(tmp_path)
    res = invoke(["inspect", "evil.pt"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, CHECKPOINT_CASES[kind])
    assert changes(before, snapshot(tmp_path)) == []


def test_non_finite_weights_are_refused_by_the_torch_backend(tiny, work):
    torch.save(_hostile_state(tiny, "nan"), work / "nan.pt")
    before = snapshot(work)
    res = invoke(["restore", "a.png", "-m", "nan.pt", "-o", "out.png"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "non-finite")
    assert changes(before, snapshot(work)) == []


def test_native_json_declaring_a_huge_model_is_refused_in_bounded_memory(tiny, tmp_path):
    shutil.copy(tiny["native"].with_suffix(".safetensors"), tmp_path / "m.safetensors")
    doc = json.loads(tiny["native"].with_suffix(".json").read_text())
    doc["config"].update(units=1024, block_width=8192, num_blocks=200, groups=64, cardinals=8)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    code, err, seconds = run_limited(["inspect", "m.json"], tmp_path)
    assert_one_error(code, err, 2, "budget")
    assert seconds < 60


@pytest.mark.parametrize("field,value,says", [
    ("units", "8", "units must be int"), ("scale", 1e9, "scale must be int"), ("sparse", 1, "sparse must be bool"),
    ("num_blocks", -3, "num_blocks=-3"), ("image_mean", None, "image_mean must be float"),
    ("patch_size", [48], "patch_size must be int"), ("channels", 10**12, "channels=")])
def test_native_json_fields_are_validated_one_by_one(tiny, tmp_path, field, value, says):
    shutil.copy(tiny["native"].with_suffix(".safetensors"), tmp_path / "m.safetensors")
    doc = json.loads(tiny["native"].with_suffix(".json").read_text())
    doc["config"][field] = value
    (tmp_path / "m.json").write_text(json.dumps(doc))
    res = invoke(["inspect", "m.json"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, says)


@pytest.mark.parametrize("doc", [[], "x", {"format": "nsr-deploy/1"}, {"format": "nsr-deploy/1", "config": 3},
                                 {"format": "nsr-deploy/1", "config": {}, "meta": []}])
def test_native_json_of_the_wrong_shape_is_one_error_line(tiny, tmp_path, doc):
    shutil.copy(tiny["native"].with_suffix(".safetensors"), tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(json.dumps(doc))
    res = invoke(["inspect", "m.json"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, "m.json")


# -- export folders --------------------------------------------------------------------------------
def _tampered(tiny, tmp_path, mutate) -> Path:
    folder = tmp_path / "exp"
    shutil.copytree(tiny["export"], folder)
    doc = json.loads((folder / "nsr.json").read_text())
    doc = mutate(doc, folder)
    if doc is not None:
        (folder / "nsr.json").write_text(json.dumps(doc))
    return folder


def _set_file(value):
    def mutate(doc, folder):
        doc["targets"]["onnx"]["file"] = value
        return doc
    return mutate


def _swap_model(doc, folder):
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-1] ^= 1
    (folder / "model.onnx").write_bytes(bytes(data))
    return doc


def _symlink_out(doc, folder):
    (folder / "link.onnx").symlink_to(folder.parent / "outside.onnx")
    shutil.copy(folder / "model.onnx", folder.parent / "outside.onnx")
    doc["targets"]["onnx"]["file"] = "link.onnx"
    return doc


def _scale(doc, folder):
    doc["model"]["config"]["scale"] = doc["semantics"]["scale"] = 3
    return doc


def _disagree(doc, folder):
    doc["semantics"]["channels"] = 1
    return doc


def _corrupt(doc, folder):
    (folder / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 20)
    del doc["targets"]["onnx"]["sha256"]
    return doc


def _drop(*keys):
    def mutate(doc, folder):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
        return doc
    return mutate


MANIFEST_CASES = {
    "dotdot": (_set_file("../outside.onnx"), "outside its folder"),
    "absolute": (_set_file("/etc/passwd"), "outside its folder"),
    "symlink": (_symlink_out, "outside its folder"),
    "swapped": (_swap_model, "sha256"),
    "list": (lambda doc, folder: [doc], "manifest format"),
    "no_model": (_drop("model"), "model is missing"),
    "no_file": (_drop("targets", "onnx", "file"), "file is missing"),
    "bad_sha": (lambda doc, folder: {**doc, "targets": {"onnx": {**doc["targets"]["onnx"], "sha256": 5}}},
                "sha256"),
    "scale": (_scale, "embedded in the verified"),
    "disagree": (_disagree, "semantics.channels"),
    "corrupt_onnx": (_corrupt, "sha256"),
    "huge_config": (lambda doc, folder: {**doc, "model": {**doc["model"], "config": {
        **doc["model"]["config"], "units": 1024, "block_width": 8192, "num_blocks": 256}}}, "budget"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_tampered_export_folder_is_one_error_line(tiny, work, case):
    mutate, says = MANIFEST_CASES[case]
    folder = _tampered(tiny, work, mutate)
    before = snapshot(work)
    res = invoke(["restore", "a.png", "-m", str(folder), "--backend", "onnxruntime", "-o", "out.png"], work)
    assert_one_error(res.exit_code, res.stderr, 2, says)
    assert changes(before, snapshot(work)) == []


def test_bare_onnx_that_is_corrupt_or_has_bad_metadata(tiny, work):
    import onnx

    (work / "bare.onnx").write_bytes(b"\x08\x07garbage" * 30)
    res = invoke(["restore", "a.png", "-m", "bare.onnx", "-o", "out.png"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "not a readable ONNX model")
    model = onnx.load(str(tiny["export"] / "model.onnx"))
    for bad, says in (("{not json", "not valid JSON"), ("[1, 2]", "not an object"),
                      ('{"model": {"config": {"units": "many"}}}', "units must be int")):
        props = {p.key: p.value for p in model.metadata_props}
        props["nsr_manifest"] = bad
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(work / "meta.onnx"))
        res = invoke(["restore", "a.png", "-m", "meta.onnx", "-o", "out.png"], work)
        assert_one_error(res.exit_code, res.stderr, 2, says)
    assert not (work / "out.png").exists()


@pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO is not installed")
@pytest.mark.parametrize("which", ["model.xml", "model.bin"])
def test_truncated_openvino_files(tiny, work, which):
    for target in ("bare", "folder"):
        folder = work / target
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(tiny["export"], folder)
        path = folder / which
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        if target == "bare":
            (folder / "nsr.json").unlink()
            model = "bare/model.xml"
        else:
            model = "folder"
        res = invoke(["restore", "a.png", "-m", model, "--backend", "openvino", "-o", "out.png"], work)
        says = "sha256" if target == "folder" else "openvino"
        assert_one_error(res.exit_code, res.stderr, 2, says)
    assert not (work / "out.png").exists()


# -- export --------------------------------------------------------------------------------------------
def test_force_replaces_only_export_folders(tiny, tmp_path):
    shutil.copy(tiny["ckpt"], tmp_path / "tiny.pt")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    res = invoke(["export", "tiny.pt", "-o", "precious", "--force"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, "not an earlier export")
    res = invoke(["export", "tiny.pt", "-o", ".", "--force"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, "current folder")
    shutil.copytree(tiny["export"], tmp_path / "old-export")
    shutil.copy(tiny["ckpt"], tmp_path / "old-export" / "tiny.pt")
    before = snapshot(tmp_path)
    res = invoke(["export", "old-export/tiny.pt", "-o", "old-export", "--force"], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, "inside")
    assert changes(before, snapshot(tmp_path)) == []
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("args,says", [
    (["--timing-cache", "tc.bin"], "--timing-cache"), (["--precision", "int8"], "--precision int8"),
    (["--calib", "cal"], "--calib"), (["--batch-profile", "1,2,4"], "--batch-profile"),
    (["--workspace", "64"], "--workspace"), (["--target", "openvino", "--calib", "cal"], "int8 only"),
    (["--allow-fallback"], "--allow-fallback"), (["--max-side", "256"], "--max-side")])
def test_options_a_target_cannot_honour_are_refused(tiny, tmp_path, args, says):
    if "openvino" in args and not HAVE_OPENVINO:
        pytest.skip("OpenVINO is not installed")
    shutil.copy(tiny["ckpt"], tmp_path / "tiny.pt")
    (tmp_path / "cal").mkdir()
    before = snapshot(tmp_path)
    res = invoke(["export", "tiny.pt", "-o", "out", *args], tmp_path)
    assert_one_error(res.exit_code, res.stderr, 2, says)
    assert changes(before, snapshot(tmp_path)) == []


def _wait_for(pattern: str, folder: Path, proc, timeout: float = 120) -> list[Path]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        found = list(folder.glob(pattern))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} appeared (exit {proc.poll()})")


def test_sigterm_cleans_up_and_sigkill_leftovers_are_cleaned_by_the_next_export(tiny, tmp_path):
    shutil.copy(tiny["ckpt"], tmp_path / "tiny.pt")
    foreign = tmp_path / ".out.tmp-notours"  # looks like ours, has no marker: must survive
    foreign.mkdir()
    (foreign / "data").write_text("someone else's")
    cmd = [sys.executable, "-m", "nsr_deploy.cli", "export", "tiny.pt", "-o", "out", "--conv-form", "grouped"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        _wait_for(".out.scratch-*", tmp_path, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        left = sorted(p.name for p in tmp_path.glob(".out.*-*") if (p / MARKER).exists())
        if sig == signal.SIGTERM:
            assert_one_error(proc.returncode, err, 143, "terminated")
            assert left == []
        else:
            assert proc.returncode == -signal.SIGKILL and left  # killed: nothing could clean up
    assert not (tmp_path / "out").exists()
    with atomic_output(tmp_path / "out") as tmp:  # the next export to the same place
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.glob(".out.*")) == [foreign.name]
    assert (foreign / "data").read_text() == "someone else's" and (tmp_path / "out" / "f").exists()


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["restore"], ["restore", "a.png"], ["export", "--nope"], ["frobnicate"],
                                  ["restore", "a.png", "-o", "x", "--threads", "zero"]])
def test_click_usage_errors_are_one_line(work, args):
    res = invoke(args, work)
    assert_one_error(res.exit_code, res.stderr, 2)
    assert "Usage:" not in res.stderr


def test_help_and_version_still_work(work):
    for args in (["--help"], ["restore", "--help"], ["--version"]):
        res = invoke(args, work)
        assert res.exit_code == 0 and res.stderr == "" and res.stdout


NO_TORCH = ("import sys; sys.modules['torch'] = None; sys.argv[0] = 'nsr-deploy'\n"
            "from nsr_deploy.cli import main; main()")


@pytest.mark.parametrize("args", [["inspect"], ["export", "-o", "out"], ["bench", "--quick", "--suite", "parity"]])
def test_commands_needing_torch_say_what_to_install(work, args):
    before = snapshot(work)
    code, err, _ = run_limited(args, work, code=NO_TORCH)
    assert_one_error(code, err, 2, "pip install 'nsr-deploy[export]'")
    assert changes(before, snapshot(work)) == []
