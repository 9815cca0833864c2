"""``backend="auto"`` on a folder with several engines: the fastest here, measured once per machine and
folder, cached, and said (nsr_deploy.runtimes.auto_choice)."""

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import export_tiny_tiled
from nsr_deploy.cli.app import main
from nsr_deploy.core.machine import describe_cpu
from nsr_deploy.runtimes import auto_choice, load
from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner
from nsr_deploy.runtimes.openvino.runner import OvRunner

SLOW_S = 0.05  # far above either tiny engine's call time


@pytest.fixture(scope="module")
def two_engines(tmp_path_factory):
    """A tiny sparse model's folder holding model.onnx (ONNX Runtime) and model.xml (OpenVINO)."""
    return export_tiny_tiled(tmp_path_factory.mktemp("auto"), "grouped", 4, target="openvino")


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NSR_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(auto_choice.ORDER_ENV, raising=False)
    return tmp_path / "cache"


def slowed(monkeypatch, cls):
    """``cls``'s engine made slower than the other by a sleep in every call."""
    real = cls._infer

    def slow(self, x, valid):
        time.sleep(SLOW_S)
        return real(self, x, valid)

    monkeypatch.setattr(cls, "_infer", slow)


@pytest.mark.parametrize("slow, fast", [(OvRunner, "onnxruntime"), (OrtRunner, "openvino")])
def test_auto_runs_the_engine_that_is_faster_here(two_engines, fresh_cache, monkeypatch, slow, fast):
    slowed(monkeypatch, slow)
    with load(two_engines, threads=1) as engine:
        info = engine.runner.describe()
        assert info["backend"] == fast
        auto = info["auto"]
        assert set(auto["candidates"]) == {"onnxruntime", "openvino"} and not auto["cached"]
        other = next(b for b in auto["candidates"] if b != fast)
        assert auto["median_ms"][other] > auto["median_ms"][fast] + 0.8 * SLOW_S * 1e3
        assert auto["why"].startswith("fastest here") and describe_cpu() in auto["why"]
        assert engine.restore(np.zeros((30, 40, 3), np.uint8)).shape == (60, 80, 3)


def test_the_choice_is_measured_once_then_read_from_the_cache(two_engines, fresh_cache, monkeypatch):
    slowed(monkeypatch, OvRunner)
    first = load(two_engines, threads=1)
    assert first.runner.backend == "onnxruntime" and not first.runner.auto_choice["cached"]
    first.close()
    records = list((fresh_cache / "auto").glob("*.json"))
    assert len(records) == 1

    opened = []
    real = OvRunner._activate
    monkeypatch.setattr(OvRunner, "_activate", lambda self: (opened.append(self), real(self)))
    again = load(two_engines, threads=1)
    assert again.runner.backend == "onnxruntime" and again.runner.auto_choice["cached"]
    assert "cached" in again.runner.auto_choice["why"] and not opened  # nothing else was loaded to decide
    # another thread count is another measurement
    load(two_engines, threads=2).close()
    assert len(list((fresh_cache / "auto").glob("*.json"))) == 2


@pytest.mark.parametrize("edit", ["garbage", "foreign key", "not a candidate", "not a dict"])
def test_a_record_that_does_not_match_is_measured_again(two_engines, fresh_cache, monkeypatch, edit):
    slowed(monkeypatch, OvRunner)
    load(two_engines, threads=1).close()
    record = next((fresh_cache / "auto").glob("*.json"))
    doc = json.loads(record.read_text())
    if edit == "garbage":
        record.write_bytes(b"\x00{not json")
    elif edit == "foreign key":
        doc["key"]["cpus"] += 1
        doc["backend"] = "openvino"
        record.write_text(json.dumps(doc))
    elif edit == "not a candidate":
        doc["backend"] = "tensorrt"
        record.write_text(json.dumps(doc))
    else:
        record.write_text("[1, 2]")
    with load(two_engines, threads=1) as engine:
        assert engine.runner.backend == "onnxruntime" and not engine.runner.auto_choice["cached"]


def test_an_engine_that_fails_here_is_left_out_with_why(two_engines, fresh_cache, monkeypatch):
    def broken(self):
        raise RuntimeError("this plugin cannot compile the model")

    monkeypatch.setattr(OvRunner, "_activate", broken)
    with load(two_engines, threads=1) as engine:
        auto = engine.runner.auto_choice
        assert engine.runner.backend == "onnxruntime"
        assert "cannot compile" in auto["not_run"]["openvino"]


def test_order_mode_and_a_single_candidate_time_nothing(two_engines, fresh_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(auto_choice.ORDER_ENV, "order")
    with load(two_engines, threads=1) as engine:
        assert engine.runner.backend == "openvino" and "not timed" in engine.runner.auto_choice["why"]
    monkeypatch.delenv(auto_choice.ORDER_ENV)
    only_onnx = export_tiny_tiled(tmp_path, "grouped", 4)
    with load(only_onnx, threads=1) as engine:
        assert engine.runner.backend == "onnxruntime"
        assert engine.runner.auto_choice["why"].startswith("the only engine")
    assert not (fresh_cache / "auto").exists()


def test_restore_says_which_engine_auto_chose_and_why(two_engines, fresh_cache, monkeypatch, tmp_path):
    slowed(monkeypatch, OrtRunner)
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src)
    result = CliRunner().invoke(main, ["restore", str(src), "-m", str(two_engines), "-o", str(tmp_path / "o.png"),
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "engine: openvino (auto: fastest here" in result.stderr
    result = CliRunner().invoke(main, ["restore", str(src), "-m", str(two_engines), "-o", str(tmp_path / "o.png"),
                                       "--threads", "1", "--json"])
    doc = json.loads(result.stdout)
    assert doc["backend"] == "openvino" and doc["auto"]["cached"] and doc["auto"]["backend"] == "openvino"


def test_a_bad_tiling_is_refused_before_anything_is_timed(two_engines, fresh_cache):
    from nsr_deploy.core.errors import NSRError

    with pytest.raises(NSRError, match="unknown tiling"):
        load(two_engines, threads=1, tiling="bogus")
    assert not (fresh_cache / "auto").exists()


def test_a_matching_record_can_only_pick_another_engine_of_the_folder(two_engines, fresh_cache, monkeypatch):
    """An edited record with the right key chooses among the folder's own (hash-checked) engines, nothing else."""
    slowed(monkeypatch, OvRunner)
    load(two_engines, threads=1).close()
    record = next((fresh_cache / "auto").glob("*.json"))
    doc = json.loads(record.read_text())
    assert doc["backend"] == "onnxruntime"
    record.write_text(json.dumps({**doc, "backend": "openvino"}))
    with load(two_engines, threads=1) as engine:
        assert engine.runner.backend == "openvino" and engine.runner.auto_choice["cached"]
        assert engine.runner.describe()["path"].startswith(str(two_engines))
