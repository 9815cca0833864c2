"""What runs is what was verified, on the file side: every file a runtime reads is named in nsr.json,
confined to the folder and hashed; each is read once and the runtime loads those very bytes (a file
swapped between the check and the load never runs); FIFOs and devices are refused at once; ONNX
Runtime's NCHWc cache entries are checked against their record and rebuilt when they do not match."""

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_error, run_limited
from PIL import Image

from conftest import decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.runtimes import backend_unavailable, load
from nsr_deploy.runtimes.onnxruntime import nchwc_probe
from nsr_deploy.runtimes.onnxruntime.specialise import cache_dir, record_of

# widths a multiple of every NCHWc block (8 and 16): where this CPU has NCHWc kernels, every ONNX Runtime load
# below goes through the load-time rewrite (and its cache), the path a real model takes
TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=16, block_width=16, groups=2, cardinals=4)
HAVE_OPENVINO = backend_unavailable("openvino") is None
HAVE_NCHWC = nchwc_probe.mlas_block_size() > 1
IMAGE = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _export(root: Path, name: str, target: str, cfg=TINY, seed=0) -> Path:
    loaded = LoadedModel(decisive_net(cfg, seed), name, "built", "0" * 64, name)
    export(loaded, root / name, target, ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    return root / name


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    out = {"root": root, "a": _export(root, "a", "onnx"), "b": _export(root, "b", "onnx", seed=1)}
    if HAVE_OPENVINO:
        out["ov"] = _export(root, "ov", "openvino")
    return out


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest, symlinks=True)
    return dest


def _edit_manifest(folder: Path, edit) -> None:
    doc = json.loads((folder / "nsr.json").read_text())
    edit(doc)
    (folder / "nsr.json").write_text(json.dumps(doc))


def _restore(folder: Path, backend: str = "auto") -> np.ndarray:
    with load(folder, backend=backend) as engine:
        return engine.restore(IMAGE)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO is not installed")
@pytest.mark.parametrize("case", ["no_weights_key", "weights_sha_null", "bin_symlink_out", "bin_fifo", "bin_edited"])
def test_openvino_weights_are_named_hashed_and_confined(folders, tmp_path, case):
    folder = _copy(folders["ov"], tmp_path / "ov")
    if case == "no_weights_key":  # before: model.bin beside model.xml loaded, unhashed
        _edit_manifest(folder, lambda d: [d["targets"]["openvino"].pop(k) for k in ("weights", "weights_sha256")])
    elif case == "weights_sha_null":
        _edit_manifest(folder, lambda d: d["targets"]["openvino"].update(weights_sha256=None))
    elif case == "bin_symlink_out":  # the same bytes, but outside the folder: refused all the same
        outside = tmp_path / "elsewhere.bin"
        shutil.copy(folder / "model.bin", outside)
        (folder / "model.bin").unlink()
        (folder / "model.bin").symlink_to(outside)
    elif case == "bin_fifo":
        (folder / "model.bin").unlink()
        os.mkfifo(folder / "model.bin")
    elif case == "bin_edited":  # one weight changed under the recorded name
        data = bytearray((folder / "model.bin").read_bytes())
        data[len(data) // 2] ^= 0x40
        (folder / "model.bin").write_bytes(bytes(data))
    with pytest.raises(NSRError):
        _restore(folder, "openvino")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_special_files_as_engine_are_one_error_line_at_once(tmp_path, kind):
    """A bare engine file (no nsr.json) that is a FIFO or a device: before, read by path (a hang, or
    /dev/zero read until memory ran out)."""
    folder = tmp_path / "bare"
    folder.mkdir()
    if kind == "fifo":
        os.mkfifo(folder / "model.onnx")
    else:
        (folder / "model.onnx").symlink_to("/dev/zero")
    image = tmp_path / "x.png"
    Image.fromarray(IMAGE).save(image)
    args = ["restore", str(image), "-m", str(folder / "model.onnx"), "-o", str(tmp_path / "o.png")]
    code, stderr, _ = run_limited(args, tmp_path, timeout=60)
    assert_one_error(code, stderr)
    assert not (tmp_path / "o.png").exists()


def test_engine_swapped_during_load_never_runs(folders, tmp_path):
    """A thread keeps renaming another model over model.onnx: every load either refuses the file or
    restores exactly what the verified model restores (before: hashed, then opened again by path)."""
    folder = _copy(folders["a"], tmp_path / "a")
    want = _restore(folders["a"])
    other = _restore(folders["b"])
    assert not np.array_equal(want, other)  # the two models are told apart by their output
    spare_a, spare_b = tmp_path / "spare_a.onnx", tmp_path / "spare_b.onnx"
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            for spare, source in ((spare_b, folders["b"]), (spare_a, folders["a"])):
                shutil.copy(source / "model.onnx", spare)
                os.replace(spare, folder / "model.onnx")

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    outcomes = {"same": 0, "refused": 0}
    try:
        for _ in range(25):
            try:
                got = _restore(folder, "onnxruntime")
            except NSRError:
                outcomes["refused"] += 1
                continue
            assert np.array_equal(got, want), "a model other than the verified one ran"
            outcomes["same"] += 1
    finally:
        stop.set()
        thread.join()
    assert outcomes["refused"] > 0, outcomes  # the swap really happened under the loads


def test_bare_engine_file_is_read_once_and_runs_as_itself(folders, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folders["a"] / "model.onnx", bare / "model.onnx")
    assert np.array_equal(_restore(bare / "model.onnx"), _restore(folders["a"]))
    (bare / "model.onnx").unlink()
    os.mkfifo(bare / "model.onnx")
    with pytest.raises(NSRError, match="pipe"):
        _restore(bare / "model.onnx")


@pytest.fixture(scope="module")
def blockable(folders, tmp_path_factory):
    """A model ONNX Runtime rewrites at load, another one, and the cache each leaves (made once)."""
    root = tmp_path_factory.mktemp("blockable")
    out = {}
    for name, folder in (("mine", folders["a"]), ("theirs", folders["b"])):
        os.environ["NSR_DEPLOY_CACHE"] = str(root / f"cache-{name}")
        try:
            with load(folder, backend="onnxruntime") as engine:  # fills the cache
                assert engine.runner.specialisation["nchwc"], engine.runner.specialisation
                out[name] = (folder, engine.restore(IMAGE), cache_dir())
        finally:
            os.environ["NSR_DEPLOY_CACHE"] = str(tmp_path_factory.getbasetemp() / "nsr-cache")
    return out


def _entries(cache: Path) -> dict[str, Path]:
    """Cache entries by batch (the key's tail), each with its record beside it."""
    entries = {p.name.split("-n")[-1]: p for p in cache.iterdir() if p.suffix == ".onnx"}
    assert entries and all(record_of(p).is_file() for p in entries.values())
    return entries


@pytest.mark.skipif(not HAVE_NCHWC, reason="this ONNX Runtime has no NCHWc kernels on this CPU")
@pytest.mark.parametrize("damage", ["other_model", "record_of_another_model", "garbage"])
def test_ort_cache_entries_are_verified_and_rebuilt(blockable, tmp_path, monkeypatch, damage):
    """A replaced cache entry must not run under a verified export; a garbage one must not fail for good."""
    folder, want, cache = blockable["mine"]
    _, other_output, other_cache = blockable["theirs"]
    assert not np.array_equal(want, other_output)
    shutil.copytree(cache.parent, tmp_path / "cache")
    monkeypatch.setenv("NSR_DEPLOY_CACHE", str(tmp_path / "cache"))
    theirs = _entries(other_cache)
    for batch, entry in _entries(cache_dir()).items():
        if damage == "garbage":
            entry.write_bytes(b"\x08\x07garbage" * 10)
            continue
        shutil.copy(theirs[batch], entry)  # their blocked model under my key
        if damage == "record_of_another_model":
            shutil.copy(record_of(theirs[batch]), record_of(entry))  # with its own, self-consistent record
    with load(folder, backend="onnxruntime") as engine:
        assert np.array_equal(engine.restore(IMAGE), want)
        assert engine.runner.specialisation["nchwc"] and not engine.runner.specialisation["cached"]
    with load(folder, backend="onnxruntime") as engine:  # rebuilt and written again: a hit now
        assert engine.runner.specialisation["cached"]
        assert np.array_equal(engine.restore(IMAGE), want)


def test_onnx_external_data_is_never_read(folders, tmp_path):
    """Tensors stored in a file beside the model would be read unhashed: the model is loaded from its
    verified bytes alone, so a model that needs external data is refused instead."""
    import onnx

    bare = tmp_path / "ext"
    bare.mkdir()
    onnx.save(onnx.load(folders["a"] / "model.onnx"), bare / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    assert (bare / "weights.data").stat().st_size > 0
    with pytest.raises(NSRError):
        _restore(bare / "model.onnx")


@pytest.mark.skipif(backend_unavailable("ncnn") is not None, reason="ncnn is not installed")
def test_an_engine_without_its_own_manifest_is_held_to_the_folders_model_onnx(tmp_path):
    """ncnn's .param carries no manifest: an edited tiling in nsr.json is caught by the verified model.onnx
    the ncnn model was lowered from."""
    loaded = LoadedModel(decisive_net(TINY, 0), "n", "built", "0" * 64, "n")
    export(loaded, tmp_path / "n", "ncnn", ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    image = np.random.default_rng(0).integers(0, 256, (8 * TINY.patch_size, 100, 3), dtype=np.uint8)
    with load(tmp_path / "n", backend="ncnn") as engine:
        engine.restore(image)
    _edit_manifest(tmp_path / "n", lambda d: d["semantics"]["tiling"]["reference"].update(
        stride=d["semantics"]["tiling"]["reference"]["stride"] - 2))
    with pytest.raises(NSRError, match="embedded in the verified model.onnx"), \
            load(tmp_path / "n", backend="ncnn") as engine:
        engine.restore(image)
