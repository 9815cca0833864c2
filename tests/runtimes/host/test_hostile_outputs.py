"""Hostile places to write to: nothing of the user's is deleted or overwritten, and an output that cannot
be written is one ``error:`` line, before any work where it can be known, with the real reason where not.

``export --force`` replaces only what an earlier export wrote (its manifest's files); ``restore`` refuses
two inputs written to one output, outputs that are no regular file or writable place, and leaves partial
files that are recognisable, skipped as inputs and cleaned by the next run. A full disk is a real tmpfs
where this user may mount one, else a write made to fail in-process.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_error, changes, invoke, run_limited, snapshot
from PIL import Image

from conftest import ROOT, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters import output_folder
from nsr_deploy.exporters.output_folder import atomic_output
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel, save_reference_checkpoint
from nsr_deploy.runtimes.host.images import is_partial, read_image

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny reference checkpoint and an ONNX export of it with conformance vectors (a folder in it)."""
    root = tmp_path_factory.mktemp("tiny-out")
    net = decisive_net(TINY)
    save_reference_checkpoint(net, root / "tiny.pt")
    loaded = LoadedModel(net, str(root / "tiny.pt"), "reference", "0" * 64, "tiny")
    export(loaded, root / "export", "onnx", ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False,
                                                           conformance=True))
    return {"ckpt": root / "tiny.pt", "export": root / "export", "loaded": loaded}


def _image(path: Path, seed: int = 0, size=(12, 10)) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def work(tiny, tmp_path):
    shutil.copy(tiny["ckpt"], tmp_path / "tiny.pt")
    return tmp_path


# -- export --force --------------------------------------------------------------------------------
def test_force_refuses_a_folder_whose_nsr_json_is_no_manifest(work):
    folder = work / "thesis"
    (folder / "photos").mkdir(parents=True)
    (folder / "nsr.json").write_text("{}\n")
    (folder / "thesis.txt").write_text("years of work")
    (folder / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    before = snapshot(work)
    res = invoke(["export", "tiny.pt", "-o", "thesis", "--force"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "not an earlier export")
    assert changes(before, snapshot(work)) == []


def test_force_refuses_an_export_holding_what_no_export_wrote(tiny, work):
    out = work / "out"
    shutil.copytree(tiny["export"], out)
    (work / "outside.txt").write_text("mine")
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"cat")
    doc = json.loads((out / "nsr.json").read_text())
    doc["notes"] = ["../outside.txt", str(work / "outside.txt"), "photos/cat.jpg"]  # a hostile manifest
    (out / "nsr.json").write_text(json.dumps(doc))
    _image(out / "result.png")  # what a restore wrote there
    (out / "mine").mkdir()
    (out / "mine" / "notes.md").write_text("x")
    (out / "photos").symlink_to(work / "photos")  # a link is never followed, nor taken for a folder of ours
    before = snapshot(work)
    res = invoke(["export", "tiny.pt", "-o", "out", "--force"], work)
    line = assert_one_error(res.exit_code, res.stderr, 2, "3 file(s) that no export wrote")
    assert "result.png" in line and "mine/" in line and "photos" in line and "notes.md" not in line
    assert changes(before, snapshot(work)) == []


def test_force_replaces_exactly_what_the_earlier_export_wrote(tiny, work):
    out = work / "out"
    shutil.copytree(tiny["export"], out)
    assert (out / "conformance").is_dir()
    written = output_folder.written_files(out)
    assert output_folder.foreign_entries(out, written) == []
    with atomic_output(out, force=True) as tmp:
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


def test_a_file_written_into_out_during_the_export_is_never_removed(tiny, work):
    out = work / "out"
    shutil.copytree(tiny["export"], out)
    before = snapshot(out)
    with pytest.raises(NSRError, match="result.png"):
        with atomic_output(out, force=True) as tmp:
            (tmp / "new").write_text("x")
            _image(out / "result.png")  # a restore writes there while the export builds
    assert (out / "result.png").is_file() and not (out / "new").exists()
    assert changes(before, snapshot(out), allowed=("result.png",)) == []
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


def test_a_file_written_between_the_last_check_and_the_swap_is_put_back(tiny, work, monkeypatch):
    out = work / "out"
    shutil.copytree(tiny["export"], out)
    real_check, calls = output_folder.check_replaceable, []

    def check_then_race(*args, **kw):  # the window between the check before the swap and the rename aside
        real_check(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            _image(out / "late.png")

    monkeypatch.setattr(output_folder, "check_replaceable", check_then_race)
    with pytest.raises(NSRError, match="late.png"):
        with atomic_output(out, force=True) as tmp:
            (tmp / "new").write_text("x")
    assert (out / "late.png").is_file() and (out / "nsr.json").is_file() and not (out / "new").exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


def test_an_out_name_at_the_length_limit_still_exports(work):
    out = work / ("o" * 250)
    with atomic_output(out) as tmp:  # its temp folders' names are cut to fit; the name itself is the user's
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x"


# -- export to a full disk -------------------------------------------------------------------------
def test_enospc_during_export_is_one_line_and_out_is_untouched(tiny, work, monkeypatch):
    shutil.copytree(tiny["export"], work / "out")
    before = snapshot(work)

    def full_disk(path, doc):
        with open(path, "w") as f:
            f.write("{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("nsr_deploy.exporters.pipeline.write_json", full_disk)
    res = invoke(["export", "tiny.pt", "-o", "out", "--force", "--conv-form", "matmul", "--patch-batch", "4"], work)
    line = assert_one_error(res.exit_code, res.stderr, 2, "no space left")
    assert str(work / "out") in line
    assert changes(before, snapshot(work)) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (skipped where this user may not mount one)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_in_export_and_restore(tiny, work, tiny_disk):
    (tiny_disk / "filler").write_bytes(b"\0" * (40 << 10))
    res = invoke(["export", "tiny.pt", "-o", str(tiny_disk / "out"), "--conv-form", "matmul", "--patch-batch", "4"],
                 work)
    assert_one_error(res.exit_code, res.stderr, 2, "no space left")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]
    _image(work / "big.png", size=(160, 160))  # its x2 output (~150 KB of noise) cannot fit
    res = invoke(["restore", "big.png", "-m", str(tiny["export"]), "-o", str(tiny_disk / "big.png")], work)
    assert_one_error(res.exit_code, res.stderr, 2, f"{tiny_disk / 'big.png'}: cannot write it (no space left")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    res = invoke(["restore", "big.png", "-m", "no-such-model", "-o", str(tiny_disk / "x.png")], work)
    assert_one_error(res.exit_code, res.stderr, 2, "read-only file system")


# -- restore: two inputs, one output ---------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["a/x.png", "b/x.png"], ["x.png", "x.jpg", "--suffix", ".png"], ["a", "b"], ["a", "b/x.png"]])
def test_two_inputs_to_one_output_are_refused_naming_both(work, args):
    for folder in ("a", "b"):
        (work / folder).mkdir()
        _image(work / folder / "x.png")
    _image(work / "x.png")
    Image.open(work / "x.png").save(work / "x.jpg")
    before = snapshot(work)
    res = invoke(["restore", *args, "-o", "out", "-m", "no-such-model"], work)  # refused before the model
    line = assert_one_error(res.exit_code, res.stderr, 2, "would both be written to")
    first, second = (a for a in args if not a.startswith("--") and a != ".png")
    assert first in line and second in line
    assert changes(before, snapshot(work)) == []


def test_the_same_input_given_twice_is_restored_once(tiny, work):
    _image(work / "x.png")
    res = invoke(["restore", "x.png", "./x.png", "-m", str(tiny["export"]), "-o", "big.png"], work)
    assert res.exit_code == 0, res.stderr
    assert Image.open(work / "big.png").size == (20, 24)


# -- restore: partial outputs of a killed run ------------------------------------------------------
SLOW_SAVE = """
import sys, time
from PIL import Image
real = Image.Image.save
def slow(self, fp, *a, **kw):
    real(self, fp, *a, **kw)
    getattr(fp, "flush", lambda: None)()
    print("saving", flush=True)
    time.sleep(60)
Image.Image.save = slow
from nsr_deploy.cli import main
sys.argv = ["nsr-deploy", *sys.argv[1:]]
main()
"""


def test_sigkill_partials_are_ours_skipped_as_inputs_and_cleaned_by_the_next_run(tiny, work):
    (work / "in").mkdir()
    for i in range(2):
        _image(work / "in" / f"{i}.png", i)
    cmd = [sys.executable, "-c", SLOW_SAVE, "restore", "in", "-m", str(tiny["export"]), "-o", "out"]
    proc = subprocess.Popen(cmd, cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    partials = [p for p in (work / "out").iterdir()]
    assert len(partials) == 1 and is_partial(partials[0].name) and partials[0].name.startswith(".0.png.")
    live = work / "out" / f".1.png.nsr-partial-{partials[0].name.split('-')[2]}-{os.getpid()}-abcdefgh.png"
    _image(live)  # a running process's partial: stays
    _image(work / "out" / ".user.png")  # hidden, not ours: stays, and is no input either
    _image(work / "out" / "visible.png")

    res = invoke(["restore", "out", "-m", str(tiny["export"]), "-o", "again", "--json"], work)
    assert res.exit_code == 0, res.stderr
    assert [Path(r["input"]).name for r in json.loads(res.stdout)["images"]] == ["visible.png"]
    res = invoke(["restore", "in", "-m", str(tiny["export"]), "-o", "out"], work)  # writes there again
    assert res.exit_code == 0, res.stderr
    assert f"note: removed {Path('out') / partials[0].name}" in res.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == sorted(
        [".user.png", live.name, "0.png", "1.png", "visible.png"])


# -- restore: outputs that cannot be written ---------------------------------------------------------
@pytest.mark.parametrize("output,says", [
    ("x.gif", ".gif is an image format nsr-deploy does not write"), ("notes.txt", ".txt is not an image format"),
    ("/dev/full", "is a device"), ("fifo", "is a pipe"), ("taken/x.png", "is not a folder")])
def test_outputs_that_cannot_be_written_are_refused_before_the_model_loads(work, output, says):
    _image(work / "a.png")
    os.mkfifo(work / "fifo")
    (work / "taken").write_text("a file")
    before = snapshot(work)
    res = invoke(["restore", "a.png", "-m", "no-such-model", "-o", output], work)
    assert_one_error(res.exit_code, res.stderr, 2, says)
    assert changes(before, snapshot(work)) == []


def test_a_name_with_a_suffix_is_a_folder_only_when_it_is_one(tiny, work):
    _image(work / "a.png")
    (work / "results.v2").mkdir()
    for output in ("results.v2", "new.d/"):
        res = invoke(["restore", "a.png", "-m", str(tiny["export"]), "-o", output], work)
        assert res.exit_code == 0, res.stderr
        assert (work / output / "a.png").is_file()


def test_a_name_at_the_length_limit_is_restored_and_one_beyond_is_refused_first(tiny, work):
    name = "n" * 250 + ".png"  # 254 bytes: the temp file beside it must not be longer than 255
    _image(work / name)
    res = invoke(["restore", name, "-m", str(tiny["export"]), "-o", "out"], work)
    assert res.exit_code == 0, res.stderr
    assert [p.name for p in (work / "out").iterdir()] == [name]
    longest = _image(work / ("n" * 251 + ".png")).name  # 255 bytes, the limit: as .jpeg, one beyond
    res = invoke(["restore", longest, "-m", "no-such-model", "-o", "out2", "--suffix", ".jpeg"], work)
    assert_one_error(res.exit_code, res.stderr, 2, "longer than the file system allows")


# -- restore: inputs that are no image file --------------------------------------------------------
def test_a_fifo_or_a_device_as_input_image_fails_alone_and_fast(tiny, work):
    (work / "in").mkdir()
    os.mkfifo(work / "in" / "fifo.png")  # a folder scan skips it (no regular file); given by name, it fails
    (work / "in" / "zero.png").symlink_to("/dev/zero")
    _image(work / "in" / "ok.png")
    t0 = time.perf_counter()
    code, err, _ = run_limited(["restore", "in/fifo.png", "in/zero.png", "in/ok.png", "-m", str(tiny["export"]),
                                "-o", "out"], work, timeout=60)
    assert "Traceback" not in err and code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "pipe" in errors[0] and "device" in errors[1], err
    assert (work / "out" / "ok.png").is_file() and time.perf_counter() - t0 < 30


def _frames(path: Path, n: int, **kw) -> Path:
    frames = [Image.new("RGB", (8, 6), (40 * i, 0, 0)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], **kw)
    return path


@pytest.mark.parametrize("name,kw", [("a.gif", {}), ("a.png", {}), ("a.tif", {}), ("a.webp", {"lossless": True})])
def test_animations_and_pages_beyond_the_first_are_warned(tmp_path, name, kw):
    img = read_image(_frames(tmp_path / name, 3, **kw), 3)
    assert "3 frames: only the first is restored" in img.warnings
    assert img.pixels.shape == (6, 8, 3)
    assert not any("frames" in w for w in read_image(_image(tmp_path / "still.png"), 3).warnings)


def test_a_replaced_export_left_aside_by_a_killed_run_loses_only_what_it_wrote(tiny, work):
    old = work / ".out.old-killed0"  # a run SIGKILLed between moving OUT aside and renaming the new one in
    shutil.copytree(tiny["export"], old / "x")
    (old / "x" / "mine.txt").write_text("mine")
    (old / output_folder.MARKER).write_text(f"999999999 {socket.gethostname()}\n")  # its process is gone
    with atomic_output(work / "out") as tmp:
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in (old / "x").iterdir()) == ["mine.txt"]
    assert (old / "x" / "mine.txt").read_text() == "mine" and not (old / output_folder.MARKER).exists()


def test_an_input_whose_output_format_is_not_written_asks_for_suffix_first(work):
    _frames(work / "anim.gif", 2)
    before = snapshot(work)
    res = invoke(["restore", "anim.gif", "-o", "out", "-m", "no-such-model"], work)  # refused before loading
    assert_one_error(res.exit_code, res.stderr, 2, "--suffix")
    assert changes(before, snapshot(work)) == []
