"""Bounded time and memory for every input: checkpoints and native models read once from regular files
under caps (FIFOs, devices, zip bombs, hostile safetensors headers and JSON), thread counts and batch
sizes bounded, calibration and gate images under the pixel budget, and the memory one image's restoration
needs budgeted (it grows with the model's scale squared). Cases whose danger is a hang or an allocation
run the CLI in a subprocess under an address-space limit and a timeout."""

import io
import json
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_error, changes, invoke, png_bytes, run_limited, snapshot
from PIL import Image

from conftest import decisive_net
from nsr_deploy.core.budgets import MAX_BATCH, read_small_text, usable_cpus
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.models.checkpoint import save_native, save_reference_checkpoint
from nsr_deploy.runtimes import backend_unavailable

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
TINY_X8 = NSRConfig(channels=3, scale=8, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    save_reference_checkpoint(decisive_net(TINY), root / "tiny.pt")
    save_reference_checkpoint(decisive_net(TINY_X8), root / "x8.pt")
    save_native(decisive_net(TINY), root / "native", {"name": "native"})
    return root


@pytest.fixture
def work(models, tmp_path):
    for name in ("tiny.pt", "x8.pt", "native.safetensors", "native.json"):
        (tmp_path / name).write_bytes((models / name).read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    return tmp_path


# -- checkpoints and native models: regular files only, read once ----------------------------------
@pytest.mark.parametrize("name,make,says", [
    ("fifo.pt", "fifo", "pipe"),  # the open or the read blocked for ever
    ("m.json", "zero", "device"),  # read_text of /dev/zero never ends
])
def test_checkpoint_or_model_description_that_is_not_a_regular_file(work, name, make, says):
    path = work / name
    if make == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    if name.endswith(".json"):
        (work / "m.safetensors").write_bytes((work / "native.safetensors").read_bytes())
    code, err, seconds = run_limited(["inspect", name], work, timeout=60)
    assert_one_error(code, err, 2, says)
    assert seconds < 30


def _deflated_bomb(source: Path, target: Path, inflated: int = 16 << 20) -> None:
    """``source``'s archive re-packed with deflate, its first tensor record swapped for ``inflated`` zero bytes
    (a few tens of KB on disk)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data/0"):
                record = zipfile.ZipInfo(info.filename)
                record.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(record, "w", force_zip64=True) as w:
                    chunk = bytes(1 << 20)
                    for _ in range(inflated >> 20):
                        w.write(chunk)
            else:
                zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_DEFLATED)


def test_deflated_checkpoint_is_refused_before_anything_is_inflated(work):
    _deflated_bomb(work / "tiny.pt", work / "bomb.pt")
    assert (work / "bomb.pt").stat().st_size < 1 << 20
    code, err, seconds = run_limited(["inspect", "bomb.pt"], work, timeout=60)
    assert_one_error(code, err, 2, "zip bomb")
    assert seconds < 30


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("case,says", [
    ("deep_metadata", "nested deeper"), ("offsets_outside", "outside"), ("shape_mismatch", "does not fill"),
    ("header_too_long", "header declares"),
])
def test_hostile_safetensors_header_is_one_error_line(work, case, says):
    floats = struct.pack("<4f", 1, 2, 3, 4)
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    if case == "deep_metadata":  # no .json beside it: the description comes from the metadata
        blob = _safetensors({"__metadata__": {"nsr_deploy": DEEP}, "w": entry}, floats)
    elif case == "offsets_outside":
        blob = _safetensors({"w": {**entry, "data_offsets": [0, 1 << 40]}}, floats)
    elif case == "shape_mismatch":
        blob = _safetensors({"w": {**entry, "shape": [100_000, 100_000]}}, floats)
    else:
        blob = struct.pack("<Q", 1 << 60) + b"{}"
    (work / "m.safetensors").write_bytes(blob)
    res = invoke(["inspect", "m.safetensors"], work)
    assert_one_error(res.exit_code, res.stderr, 2, says)


@pytest.mark.parametrize("text,says", [(DEEP, "nested deeper"), ('{"format": ' + "9" * 5000 + "}", "digits")])
def test_native_json_deeply_nested_or_with_huge_integers(work, text, says):
    (work / "native.json").write_text(text)
    res = invoke(["inspect", "native.json"], work)
    assert_one_error(res.exit_code, res.stderr, 2, says)


def test_unreadable_checkpoint_is_one_error_line(models):
    """A checkpoint this user may not read. As root, the read runs with the effective uid of nobody
    (root reads anything); the folder is one nobody may enter."""
    folder = Path(tempfile.mkdtemp(prefix="nsr-perm-"))
    try:
        folder.chmod(0o755)
        ckpt = folder / "locked.pt"
        ckpt.write_bytes((models / "tiny.pt").read_bytes())
        ckpt.chmod(0)
        invoke(["inspect", str(models / "tiny.pt")], folder)  # every lazy import done before dropping root
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(65534)
        try:
            res = invoke(["inspect", "locked.pt"], folder)
        finally:
            if as_root:
                os.seteuid(0)
        assert_one_error(res.exit_code, res.stderr, 2, "permission denied")
    finally:
        (folder / "locked.pt").chmod(stat.S_IRUSR | stat.S_IWUSR)
        (folder / "locked.pt").unlink()
        folder.rmdir()


def test_what_is_hashed_is_the_bytes_that_were_loaded(work):
    import hashlib

    res = invoke(["inspect", "tiny.pt", "--json"], work)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["sha256"] == hashlib.sha256((work / "tiny.pt").read_bytes()).hexdigest()


def test_read_small_text_is_bounded_too(tmp_path):
    (tmp_path / "nsr.json").write_text(DEEP)
    with pytest.raises(NSRError, match="nested deeper"):
        read_small_text(tmp_path / "nsr.json")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(NSRError, match="pipe"):
        read_small_text(tmp_path / "fifo.json")


# -- threads and batches ---------------------------------------------------------------------------
TOO_MANY = str(usable_cpus() + 1)


@pytest.mark.parametrize("args", [
    ["restore", "a.png", "-m", "tiny.pt", "-o", "out.png", "--threads", "10000"],
    ["restore", "a.png", "-m", "tiny.pt", "-o", "out.png", "--threads", TOO_MANY],
    ["export", "tiny.pt", "-o", "exp", "--threads", TOO_MANY],
    ["bench", "--quick", "--suite", "parity", "--threads", TOO_MANY],
])
def test_threads_beyond_the_usable_cpus_are_refused(work, args):
    before = snapshot(work)
    code, err, seconds = run_limited(args, work, timeout=60)
    assert_one_error(code, err, 2, f"1..{usable_cpus()}")
    assert seconds < 30 and changes(before, snapshot(work)) == []


@pytest.mark.parametrize("args,says", [
    (["restore", "a.png", "-m", "tiny.pt", "-o", "out.png", "--tile-batch", "1000000000"], "--tile-batch"),
    (["export", "tiny.pt", "-o", "exp", "--patch-batch", "1000000000"], "--patch-batch"),
    (["bench", "--quick", "--suite", "layer", "--layer-shape", "64,64,1000000000"], "batch"),
])
def test_batches_beyond_what_a_manifest_allows_are_refused(work, args, says):
    before = snapshot(work)
    code, err, seconds = run_limited(args, work, timeout=60)
    assert_one_error(code, err, 2, says)
    assert str(MAX_BATCH) in err and seconds < 30 and changes(before, snapshot(work)) == []


def test_python_api_bounds_threads_and_tile_batch(work):
    from nsr_deploy.runtimes import load

    with pytest.raises(NSRError, match=f"1..{usable_cpus()}"):
        load(work / "tiny.pt", threads=10_000)
    with pytest.raises(NSRError, match=str(MAX_BATCH)):
        load(work / "tiny.pt", tile_batch=10**9)


# -- calibration and gate images -------------------------------------------------------------------
@pytest.mark.skipif(backend_unavailable("openvino") is not None, reason="OpenVINO is not installed")
def test_calibration_image_header_over_the_pixel_budget(work):
    (work / "calib").mkdir()
    (work / "calib" / "bomb.png").write_bytes(png_bytes(100_000, 100_000))
    code, err, seconds = run_limited(["export", "tiny.pt", "--target", "openvino", "--precision", "int8",
                                      "--calib", "calib", "-o", "exp"], work, timeout=120)
    assert_one_error(code, err, 2, "bomb.png: 100000x100000")
    assert "pixel budget" in err and not (work / "exp").exists()


READ_GATE_SET = ("import sys\nfrom nsr_deploy.checks.task import read_images\n"
                 "from nsr_deploy.core.errors import NSRError\n"
                 "try:\n    read_images(sys.argv[1], 3)\nexcept NSRError as e:\n"
                 "    print(f'error: {e}', file=sys.stderr); sys.exit(2)\n")


def test_gate_image_header_over_the_pixel_budget(work):
    """The int8 gate's images, the calibration images and the bench's data sets share one reader."""
    (work / "gate").mkdir()
    (work / "gate" / "bomb.png").write_bytes(png_bytes(100_000, 100_000))
    code, err, seconds = run_limited(["gate"], work, timeout=60, code=READ_GATE_SET)
    assert_one_error(code, err, 2, "pixel budget")
    assert seconds < 30


def test_a_folder_of_images_shares_one_pixel_budget(work, monkeypatch):
    from nsr_deploy.checks.task import read_images

    (work / "gate").mkdir()
    for name in ("a.png", "b.png"):
        (work / "gate" / name).write_bytes((work / "a.png").read_bytes())  # 480 pixels each
    monkeypatch.setenv("NSR_MAX_PIXELS", "960")
    assert [name for name, _ in read_images(work / "gate", 3)] == ["a.png", "b.png"]
    monkeypatch.setenv("NSR_MAX_PIXELS", "959")
    with pytest.raises(NSRError, match="together"):
        read_images(work / "gate", 3)


# -- memory that scales with the model -------------------------------------------------------------
def test_memory_budget_from_option_and_environment(work):
    before = snapshot(work)
    res = invoke(["restore", "a.png", "-m", "tiny.pt", "-o", "out.png", "--max-memory", "64K"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "memory budget of 0.1 MiB (--max-memory)")
    res = invoke(["restore", "a.png", "-m", "tiny.pt", "-o", "out.png"], work, env={"NSR_MAX_MEMORY": "64K"})
    assert_one_error(res.exit_code, res.stderr, 2, "NSR_MAX_MEMORY")
    res = invoke(["restore", "a.png", "-m", "tiny.pt", "-o", "out.png"], work, env={"NSR_MAX_MEMORY": "lots"})
    assert_one_error(res.exit_code, res.stderr, 2, "NSR_MAX_MEMORY must be a size")
    assert changes(before, snapshot(work)) == []
    res = invoke(["restore", "a.png", "-m", "tiny.pt", "-o", "out.png", "--max-memory", "1G"], work)
    assert res.exit_code == 0, res.stderr


def _zero_png(width: int, height: int) -> bytes:
    rows = zlib.compress(bytes(width * 3 + 1) * height, 1)  # filter byte + black RGB, row after row
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_an_x8_model_is_budgeted_on_its_output_not_its_input(work):
    """4 Mpx in, well inside the pixel budget, is 256 Mpx out at x8: more than the address-space limit."""
    (work / "big.png").write_bytes(_zero_png(2000, 2000))
    before = snapshot(work)
    code, err, seconds = run_limited(["restore", "big.png", "-m", "x8.pt", "-o", "out.png"], work, timeout=120)
    assert_one_error(code, err, 2, "restoring 2000x2000 at x8 to 16000x16000 needs about")
    assert "memory budget" in err and seconds < 60 and changes(before, snapshot(work)) == []


def test_memory_estimate_grows_with_the_scale_squared(work):
    from nsr_deploy.runtimes import load

    with load(work / "tiny.pt", threads=1) as x2, load(work / "x8.pt", threads=1) as x8:
        small, big = x2.memory_needed(4000, 5000), x8.memory_needed(4000, 5000)
    assert 20e6 * 3 * 4 * 4 < small < 20e6 * 3 * 4 * 4 * 3  # at least the float output
    assert big > 20e6 * 3 * 4 * 64 and big > 10 * small


def test_checkpoint_archive_check_reads_only_the_directory(work):
    from nsr_deploy.models.checkpoint import check_archive

    data = (work / "tiny.pt").read_bytes()
    check_archive(data, work / "tiny.pt")  # an honest torch.save archive passes
    with pytest.raises(NSRError, match="corrupt"):
        check_archive(data[: len(data) // 2], work / "tiny.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), b"x")
    with pytest.raises(NSRError):
        check_archive(buf.getvalue()[:-10], work / "tiny.pt")


def test_a_patch_too_small_for_the_reference_tiling_is_one_error_line(tmp_path):
    """Patches of 8-16 passed --patch-size's range but left the tiling no stride: a traceback at export."""
    from hostile import assert_one_error, run_limited

    code, stderr, _ = run_limited(["export", "--patch-size", "16", "-o", str(tmp_path / "out")], tmp_path, timeout=120)
    assert_one_error(code, stderr, contains="patch size must be >= 17")
    assert not (tmp_path / "out").exists()
