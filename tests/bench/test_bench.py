"""nsr-deploy bench: every suite in a tiny configuration through the Python API and the CLI, the report's
content (rows, skipped backends with reasons, JSON, PNG), and the parity gate logic (a perturbed engine
fails, an exact one passes). No timing assertions: figures are only checked to exist and be positive."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import decisive_net
from nsr_deploy.bench import BenchSettings, LayerProtocol, ModelProtocol, ParityProtocol, run_bench
from nsr_deploy.bench import paper as paper_numbers
from nsr_deploy.bench.engines import EngineFactory
from nsr_deploy.bench.suites.layer import configurations, parameters
from nsr_deploy.bench.suites.model import NOISY_SPREAD
from nsr_deploy.checks.gates import float_parity, task_drop_parity
from nsr_deploy.checks.samples import as_chw, sample_images
from nsr_deploy.checks.task import Task
from nsr_deploy.checks.verdicts import FP32_MAX_ABS
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models.checkpoint import load_model, save_native
from nsr_deploy.models.network import NSRNet
from nsr_deploy.runtimes import backend_unavailable
from nsr_deploy.runtimes.base import Runner
from nsr_deploy.runtimes.engine import Engine
from nsr_deploy.runtimes.torch.runner import TorchRunner

TINY_SR = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
TINY_DENOISE = NSRConfig(channels=1, scale=1, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
TINY_LAYER = LayerProtocol(channels=16, patch=16, batch=2, runs=1, warmup=0)
TINY_MODEL = ModelProtocol(height=192, width=192, runs=1, warmup=0, patch_batch=4, patch_runs=1, patch_warmup=0)
HAVE_OPENVINO = backend_unavailable("openvino") is None


def _net(cfg: NSRConfig, seed: int = 0) -> NSRNet:
    return decisive_net(cfg, seed)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_native(_net(TINY_SR), root / "tiny-sr", {"name": "tiny-sr", "task": "sr"})
    save_native(_net(TINY_DENOISE), root / "tiny-dn", {"name": "tiny-dn", "task": "noise", "sigma": 25})
    return {"sr": root / "tiny-sr.safetensors", "denoise": root / "tiny-dn.safetensors"}


@pytest.fixture(scope="module")
def report(models, data_dir):
    """Every suite, every backend, through the Python API (int8 included when OpenVINO is here)."""
    settings = BenchSettings.preset(
        "quick", layer=TINY_LAYER, model=TINY_MODEL, conv_forms=("grouped", "nchwc"), threads=2, progress=False,
        data_dir=data_dir, parity=ParityProtocol(patches=4, images=1, openvino_precisions=("fp32", "fp16", "int8")))
    return run_bench(settings, load_model(models["sr"]))


class Perturbed(Runner):
    """A runner whose outputs are the exact ones plus ``offset`` (and optional seeded noise)."""

    def __init__(self, inner: Runner, offset: float = 0.0, noise: float = 0.0):
        super().__init__(inner.path, inner.threads)
        self.inner, self.offset, self.noise = inner, offset, noise
        self.rng = np.random.default_rng(0)

    def _activate(self):
        self.inner.activate()
        self.static_batch = self.inner.static_batch

    def _infer(self, x, valid):
        y = self.inner.infer(x, valid) + np.float32(self.offset)
        if self.noise:
            y = y + self.rng.normal(0, self.noise, y.shape).astype(np.float32)
        return y


def _assert_openvino_nchwc_skipped_with_why(report, skipped: dict) -> None:
    """nchwc asked for: OpenVINO, when used, skips that form saying only ONNX Runtime runs it; without
    OpenVINO the whole backend is skipped, with its own reason, and no form of it is listed."""
    if HAVE_OPENVINO:
        assert "only ONNX Runtime runs them" in skipped["openvino nchwc"], skipped
    else:
        assert report.data["backends"]["openvino"]["status"] == "skipped" and report.data["backends"]["openvino"]["why"]
        assert not any(what.startswith("openvino") for what in skipped), skipped


# -- the Python API: every suite ------------------------------------------------------------------
def test_report_carries_machine_facts_settings_and_every_suite(report):
    d = report.data
    assert d["format"] == "nsr-deploy/bench-1" and d["preset"] == "quick"
    assert set(d["suites"]) == {"parity", "layer", "model", "quality"}
    m = d["machine"]
    assert m["cpu"] and m["usable_cpus"] >= 1 and m["threads"] == 2
    assert m["versions"]["torch"] and m["versions"]["onnxruntime"] and m["versions"]["numpy"]
    assert m["sgemm"]["gflops"] > 0 and m["sgemm"]["threads"] == 2
    assert d["model"]["name"] == "tiny-sr" and d["model"]["k"] == 2
    assert d["settings"]["layer"]["cardinals"] == 1  # 16 channels / k=16 leaves one output per group
    assert d["crashed"] == [] and len(d["job_seconds"]) > 40
    figures = {f["figure"] for f in d["summary"]}
    assert "patch batch: best engine / its dense twin" in figures
    assert "layer onnxruntime: fixed size k=4 / baseline" in figures
    assert "summary: headline figures of this run" in report.render()


def test_every_used_backend_gets_the_same_threads_and_skipped_ones_say_why(report):
    backends = report.data["backends"]
    used = [b for b, v in backends.items() if v["status"] == "used"]
    assert {"torch", "onnxruntime"} <= set(used) and ("openvino" in used) == HAVE_OPENVINO
    assert all(backends[b]["threads"] == 2 and "2" in backends[b]["how"] for b in used)
    assert backends["tensorrt"]["status"] == "skipped" and "--device cpu" in backends["tensorrt"]["why"]
    text = report.render()
    assert "skipped: tensorrt (a GPU backend" in text
    assert "2 threads for every backend" in text


def test_layer_suite_has_figure5_rows_for_every_backend(report):
    layer = report.data["suites"]["layer"]
    assert layer["protocol"]["batch"] == 2 and layer["protocol"]["statistic"] == "mean"
    rows = layer["rows"]
    backends = ["torch", "onnxruntime"] + (["openvino"] if HAVE_OPENVINO else [])
    forms = {"torch": ["eager"], "onnxruntime": ["grouped", "nchwc"], "openvino": ["grouped"]}
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        # per conv form and protocol: its own plain-conv baseline and k = 2, 4, 8, 16
        assert len(mine) == 10 * len(forms[backend]), backend
        for form in forms[backend]:
            assert sum(r["variant"] == form for r in mine) == 8, (backend, form)
            for protocol in ("fixed size", "fixed FLOPs"):
                line = [r for r in mine if r["timed_with"] == f"{form} {protocol}"]
                base = next(r for r in line if r["protocol"] == "baseline")
                assert len(line) == 5 and base["ratio"] == 1.0 and base["paper_ms"] == paper_numbers.BASELINE_MS
                for r in line:  # each ratio is to the baseline timed beside it
                    assert r["ratio"] == round(r["ms"] / base["ms"], 3), r
        for r in mine:
            assert r["ms"] > 0 and r["runs"] == 1 and r["threads"] == 2
            assert r["max_abs_vs_reference"] < 1e-4  # the exported graph computes the reference layer
        for size4 in [r for r in mine if r["protocol"] == "fixed size" and r["k"] == 4]:
            assert size4["per_patch_out"] == 4 and size4["paper_ms"] == 0.77 and size4["paper_ratio"] == 0.393
    _assert_openvino_nchwc_skipped_with_why(report, layer["skipped"])
    text = report.render()
    assert "layer (paper Figure 5)" in text and "paper i5-2500" in text and "onnxruntime grouped" in text


def test_layer_configurations_follow_the_paper():
    proto = LayerProtocol()
    assert proto.cardinals == 4
    configs = configurations(proto)
    base = configs[0]
    assert [c.out for c in configs if c.protocol == "fixed size"] == [32, 16, 8, 4]
    assert {c.out for c in configs if c.protocol == "fixed FLOPs"} == {64}
    weights = {c.key: parameters(proto, c) - (proto.channels + 1) * c.k * proto.cardinals * (c.k > 1)
               for c in configs}
    assert all(weights[c.key] == weights[base.key] for c in configs if c.protocol == "fixed size")
    assert all(weights[c.key] == c.k * weights[base.key] for c in configs if c.protocol == "fixed FLOPs")


def test_model_suite_rows(report):
    model = report.data["suites"]["model"]
    image = model["image"]
    engines = {(r["engine"], r["tiling"]) for r in image}
    assert ("reference path (torch eager)", "reference") in engines
    assert {("torch", "cells"), ("onnxruntime grouped", "reference"), ("dense twin onnxruntime", "exact")} <= engines
    for r in image:
        assert "error" not in r, r
        assert r["p90_ms"] >= r["median_ms"] > 0 and r["gflops"] > 0 and r["of_sgemm"] > 0 and r["mp_per_s"] > 0
        assert r["pixels_computed"] >= 192 * 192 and r["speedup_vs_reference_path"] > 0
    patches = model["patch_batch"]
    assert all(r["patches"] == 4 and r["patch"] == 48 for r in patches)
    sparse = [r for r in patches if not r["dense_twin"]]
    assert sparse and all(r["vs_dense_twin"] > 0 and r["vs_torch_eager"] > 0 for r in sparse)
    for r in patches:  # the spread mark follows the row's own p90 / median
        assert r["spread"] == round(r["p90_ms"] / r["median_ms"], 3) and r["noisy"] == (r["spread"] > NOISY_SPREAD)
    _assert_openvino_nchwc_skipped_with_why(report, model["skipped"])
    text = report.render()
    assert "patch batch: 4 patches of 48x48" in text and "of sgemm" in text


def test_parity_suite_passes_every_engine(report):
    parity = report.data["suites"]["parity"]
    assert parity["passed"] is True and report.passed is True
    rows = {r["engine"]: r for r in parity["rows"]}
    assert rows["onnxruntime grouped"]["tolerance"] == FP32_MAX_ABS
    assert {c["check"] for c in rows["onnxruntime grouped"]["checks"]} == {"random_patches", "real_tiles",
                                                                           "real_image"}
    if HAVE_OPENVINO:
        assert rows["openvino grouped fp16"]["tolerance"] == 5e-3
        int8 = rows["openvino grouped int8"]["checks"][0]
        assert int8["check"] == "task_psnr_drop" and "drop_db" in int8
    assert "all engines pass" in report.render()


def test_quality_suite_scores_reference_engines_and_bicubic(report):
    quality = report.data["suites"]["quality"]
    rows = [r for r in quality["rows"] if r["dataset"] == "CSet5"]
    by = {r["method"]: r for r in rows}
    assert {"baseline", "reference (torch)", "onnxruntime grouped"} <= set(by)
    assert by["baseline"]["psnr"] > 25 and 0 < by["baseline"]["ssim"] <= 1  # bicubic on a real photo
    assert abs(by["onnxruntime grouped"]["psnr"] - by["reference (torch)"]["psnr"]) < 0.01
    assert "CSet14" in {r["dataset"] for r in quality["rows"]}
    assert "bicubic" in report.render()


def test_json_and_png_are_written(report, tmp_path):
    doc = json.loads(report.write_json(tmp_path / "bench.json").read_text())
    assert doc["suites"]["layer"]["paper"]["baseline_ms"] == 1.96 and doc["job_seconds"]
    png = report.write_plot(tmp_path / "figure5.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_layer_and_model_with_json_and_plot(models, tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "f5.png"
    res = CliRunner().invoke(main, ["bench", "--model", str(models["sr"]), "--suite", "layer,model", "--quick",
                                    "--layer-shape", "16,16,2", "--runs", "1", "--layer-runs", "2", "--patch-runs", "3",
                                    "--image-size", "192", "--backends", "torch,onnxruntime,tensorrt",
                                    "--conv-forms", "matmul",
                                    "--threads", "2", "--json", str(out_json), "--plot", str(out_png)])
    assert res.exit_code == 0, res.output
    for title in ("layer (paper Figure 5)", "model: tiny-sr", "patch batch: 16 patches of 48x48",
                  "skipped: tensorrt (", "onnxruntime matmul", "torch eager"):
        assert title in res.stdout
    doc = json.loads(out_json.read_text())
    assert doc["command"].startswith("nsr-deploy bench --model") and "--quick" in doc["command"]
    assert doc["settings"]["threads"] == 2 and doc["settings"]["layer"]["channels"] == 16
    assert doc["settings"]["layer"]["runs"] == 2 and doc["settings"]["model"]["runs"] == 1  # --layer-runs wins
    assert doc["settings"]["model"]["patch_runs"] == 3  # and --patch-runs
    assert all(r["runs"] == 3 for r in doc["suites"]["model"]["patch_batch"] if "median_ms" in r)
    assert all(r["runs"] == 2 for r in doc["suites"]["layer"]["rows"] if "ms" in r)
    assert set(doc["suites"]) == {"layer", "model"} and doc["passed"] is None
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_parity_and_quality_for_a_denoiser(models, data_dir):
    res = CliRunner().invoke(main, ["bench", "--model", str(models["denoise"]), "--suite", "parity,quality",
                                    "--quick", "--backends", "torch", "--data", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert "BSD68" in res.stdout and "degraded input" in res.stdout
    for level in ("sigma 15", "sigma 25", "sigma 50"):
        assert level in res.stdout
    assert "all engines pass" in res.stdout


def test_cli_exit_code_1_when_an_engine_fails_parity(models, monkeypatch):
    exact = EngineFactory.runner
    monkeypatch.setattr(EngineFactory, "runner", lambda self, spec: Perturbed(exact(self, spec), offset=1e-3))
    res = CliRunner().invoke(main, ["bench", "--model", str(models["sr"]), "--suite", "parity", "--quick",
                                    "--backends", "torch"])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.stdout and "parity FAILED: torch" in res.stdout


def test_a_crashing_configuration_is_reported_and_the_run_goes_on(monkeypatch):
    from nsr_deploy.bench.suites.layer import LayerSuite

    prepare = LayerSuite._prepare

    def flaky(self, stack, backend, variant, c):
        if c.k == 4:
            raise RuntimeError("kaboom")
        return prepare(self, stack, backend, variant, c)

    monkeypatch.setattr(LayerSuite, "_prepare", flaky)
    settings = BenchSettings.preset("quick", suites=("layer",), backends=("torch",), layer=TINY_LAYER, threads=1,
                                    progress=False)
    result = run_bench(settings)
    assert result.passed is False and len(result.data["crashed"]) == 2  # k=4 at fixed size and at fixed FLOPs
    assert len(result.data["suites"]["layer"]["rows"]) == 8  # two baselines (one per line) and 3 + 3 sparse
    assert "crashed: layer torch eager fixed size k=4: RuntimeError: kaboom" in result.render()


@pytest.mark.parametrize("args", [
    ["--suite", "layer,speed"], ["--backends", "cuda"], ["--quick", "--paper"], ["--threads", "0"],
    ["--threads", "two"], ["--frobnicate"], ["--device", "gpu"], ["--layer-shape", "64,64"], ["--image-size", "0"],
    ["--layer-shape", "12,16,2"], ["--conv-forms", "winograd"], ["--plot", "f.png", "--suite", "model"],
    ["--json", "/no/such/folder/b.json"], ["--data", "/no/such/folder"], ["--model", "no-such-model"],
])
def test_cli_bad_options_give_one_error_line_and_exit_2(args):
    res = CliRunner().invoke(main, ["bench", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output


# -- the parity gate logic ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gate_inputs(models):
    loaded = load_model(models["sr"])
    return loaded, sample_images(3, 1)


def test_an_exact_engine_passes_and_a_perturbed_one_fails_fp32(gate_inputs):
    loaded, images = gate_inputs
    exact = TorchRunner("tiny", 1, net=loaded.net)
    assert all(r.passed for r in float_parity(loaded.net, exact, "fp32", as_chw(images), patches=4))
    off = float_parity(loaded.net, Perturbed(TorchRunner("tiny", 1, net=loaded.net), offset=2e-4), "fp32",
                       as_chw(images), patches=4)
    assert not any(r.passed for r in off) and all(abs(r.max_abs - 2e-4) < 1e-5 for r in off)


def test_fp16_gate_takes_its_tolerance_and_psnr_floor(gate_inputs):
    loaded, images = gate_inputs
    near = float_parity(loaded.net, Perturbed(TorchRunner("t", 1, net=loaded.net), offset=1e-3), "fp16",
                        as_chw(images), patches=4)
    assert all(r.passed for r in near)  # 1e-3 <= 5e-3, and 60 dB >= 45 dB
    far = float_parity(loaded.net, Perturbed(TorchRunner("t", 1, net=loaded.net), offset=1e-2), "fp16",
                       as_chw(images), patches=4)
    assert not any(r.passed for r in far)


def test_int8_gate_is_judged_on_the_task(gate_inputs):
    loaded, images = gate_inputs
    task = Task("sr", 2)
    exact, figures = task_drop_parity(loaded.net, Engine(TorchRunner("t", 1, net=loaded.net), loaded.config),
                                      images, task)
    assert exact.passed and figures["drop_db"] == 0.0
    noisy = Engine(Perturbed(TorchRunner("t", 1, net=loaded.net), noise=0.2), loaded.config)
    worse, figures = task_drop_parity(loaded.net, noisy, images, task)
    assert not worse.passed and figures["drop_db"] > 0.3


# -- interleaved timing ---------------------------------------------------------------------------
class DriftingMachine:
    """A fake clock: each call costs its configuration's work times a slowdown that grows with every
    call made (a machine that gets busier during the measurement)."""

    def __init__(self, work: dict[str, float], drift_per_call: float):
        self.now, self.calls, self.log = 0.0, 0, []
        self.work, self.drift = work, drift_per_call

    def perf_counter(self) -> float:
        return self.now

    def call(self, key: str):
        def run():
            self.log.append(key)
            self.now += self.work[key] * (1.0 + self.drift * self.calls)
            self.calls += 1
        return run


def test_interleaved_timing_keeps_ratios_on_a_drifting_machine(monkeypatch):
    import types

    from nsr_deploy.core import timing

    work = {"baseline": 1.0, "sparse": 0.4}
    fake = DriftingMachine(work, drift_per_call=0.02)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    calls = {k: fake.call(k) for k in work}
    got = timing.measure_interleaved(calls, runs=30, warmup=2, rounds=5, settle_s=0)
    assert all(t.runs == 30 and t.warmup == 2 for t in got.values())
    # every configuration: 2 warm-up, 5 untimed (one per round), 30 timed; rounds start in turn
    assert fake.log.count("baseline") == fake.log.count("sparse") == 37
    assert fake.log[4] == "baseline" and fake.log[4 + 14] == "sparse"
    interleaved = got["sparse"].mean / got["baseline"].mean

    fake2 = DriftingMachine(work, drift_per_call=0.02)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake2.perf_counter))
    blocks = {k: timing.measure(fake2.call(k), runs=30, warmup=2) for k in work}  # one block after the other
    one_after_the_other = blocks["sparse"].mean / blocks["baseline"].mean
    assert abs(interleaved - 0.4) < 0.03 < abs(one_after_the_other - 0.4)


def test_a_ratio_on_a_busy_row_is_marked():
    """A twin row whose p90 sits far above its median (the machine was busy) marks the sparse / twin ratio
    built on it; a ratio of two quiet rows stays unmarked, and the ratio itself is the medians'."""
    from nsr_deploy.bench.suites.model import twin_ratios

    def row(engine, backend, twin, median, p90):
        return {"engine": engine, "backend": backend, "precision": "fp32", "dense_twin": twin,
                "median_ms": median, "p90_ms": p90}

    rows = [row("a", "x", False, 120.0, 125.0), row("twin a", "x", True, 100.0, 100.0 * NOISY_SPREAD + 1),
            row("b", "y", False, 130.0, 131.0), row("twin b", "y", True, 100.0, 105.0)]
    twin_ratios(rows)
    assert [r["noisy"] for r in rows] == [False, True, False, False]
    assert [r["vs_dense_twin"] for r in rows] == [1.2, None, 1.3, None]
    assert [r["vs_dense_twin_noisy"] for r in rows] == [True, False, False, False]


def test_each_table_is_shown_as_it_is_done_with_plain_progress_lines_when_piped(models, monkeypatch, capfd):
    """The heading comes before any work; a layer backend's table right after that backend's timing, before
    the next backend's graphs are built; a suite's other tables right after its jobs, before the next suite's;
    piped, the progress is a plain line per configuration on stderr; the rest of the report
    (``render(streamed=True)``) completes what was shown into the whole report."""
    from nsr_deploy.bench import api

    events, real_run_jobs = [], api.run_jobs

    def run_jobs(jobs, progress, loads=None, what="bench", show=None):
        for job in jobs:
            job.run = lambda run=job.run, label=job.label: (events.append(("job", label)), run())
        return real_run_jobs(jobs, progress, loads, what, show)

    monkeypatch.setattr(api, "run_jobs", run_jobs)
    settings = BenchSettings.preset("quick", layer=TINY_LAYER, model=TINY_MODEL, conv_forms=("matmul",), threads=1,
                                    progress=True, backends=("torch", "onnxruntime"), suites=("layer", "model"))
    report = run_bench(settings, load_model(models["sr"]), command="the-test",
                       on_text=lambda text: events.append(("text", text)))
    kinds = [e if e[0] == "job" else ("text", e[1].splitlines()[0][:31]) for e in events]
    assert events[0][0] == "text" and events[0][1].startswith("the-test  [quick preset]")
    torch_table, ort_table = ("text", "layer (paper Figure 5) on torch"), ("text", "layer (paper Figure 5) on onnxr")
    assert kinds.index(("job", "layer torch eager fixed FLOPs timing")) < kinds.index(torch_table) \
        < kinds.index(("job", "layer onnxruntime matmul fixed size plain conv")) \
        < kinds.index(("job", "layer onnxruntime matmul fixed FLOPs timing")) \
        < kinds.index(ort_table) < kinds.index(("job", "model reference path"))
    shown = [text for kind, text in events if kind == "text"]
    assert len(shown) == 1 + report.streamed and report.streamed == len(report.tables) - bool(report.data["summary"])
    assert [t.render() for t in report.tables[:report.streamed]] == shown[1:]  # shown once each, in order
    assert report.render(streamed=True).endswith(report.render().split("\n\n")[-1])  # the done line
    err = capfd.readouterr().err
    assert "layer [1/" in err and "model [1/" in err  # not a terminal here: plain lines


def test_the_default_run_starts_with_the_quick_layer_suite_and_keeps_every_suite():
    from nsr_deploy.bench.settings import DEFAULT_SUITES

    assert DEFAULT_SUITES[0] == "layer" and BenchSettings().suites == DEFAULT_SUITES
    assert set(DEFAULT_SUITES) == {"layer", "parity", "model", "quality"}



# -- like with like: each precision against its own GEMM peak ----------------------------------------
def test_a_reduced_precision_row_is_read_against_its_own_peak_or_says_it_is_not():
    from nsr_deploy.bench.suites.model import peak_figures

    peaks = {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 400.0}}
    bf16 = peak_figures(200.0, "bf16", peaks)
    assert bf16["of_peak"] == 0.5 and bf16["peak"] == "bf16 GEMM" and bf16["of_sgemm"] == 2.0
    assert peak_figures(50.0, "fp32", peaks)["of_peak"] == 0.5 and peak_figures(50.0, "fp32", peaks)["peak"] == "sgemm"
    int8 = peak_figures(300.0, "int8", peaks)  # no int8 peak measured: against fp32, and named so
    assert int8["of_peak"] == 3.0 and int8["peak"] == "fp32 sgemm (no int8 peak here)"


def test_the_headline_names_the_peak_of_the_best_engines_precision():
    from nsr_deploy.bench.report.summary import model_figures

    row = {"engine": "openvino folded bf16", "backend": "openvino", "dense_twin": False, "median_ms": 5.0,
           "vs_dense_twin": 1.0, "vs_torch_eager": 0.5, "of_sgemm": 2.4, "of_peak": 0.6, "peak": "bf16 GEMM"}
    slower = {**row, "engine": "openvino folded", "median_ms": 9.0, "of_peak": 0.9, "peak": "sgemm"}
    figures = {f["figure"]: f for f in model_figures({"patch_batch": [slower, row], "image": []})}
    share = figures["patch batch: best engine's GFLOP/s / bf16 GEMM"]
    assert share["value"] == 0.6 and share["engine"] == "openvino folded bf16"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_reduced_precision_gemm_peak_is_measured_as_sgemm_is(precision):
    from nsr_deploy.bench.machine import gemm_peak

    peak = gemm_peak(precision, threads=1, size=128, runs=2, warmup=1)
    if peak is None:
        pytest.skip(f"torch has no {precision} matrix product on this CPU")
    assert peak["precision"] == precision and peak["gflops"] > 0 and peak["size"] == 128 and peak["threads"] == 1
    assert peak["libraries"][peak["library"]]["runs"] == 2


# -- what a run prints --------------------------------------------------------------------------------
def test_a_run_prints_user_words_only(report):
    import re

    text = report.render()
    assert not re.search(r"\bissues?\b|#\d|\bticket|\bthis week\b|goal \(|target \(", text, re.IGNORECASE), text


def test_a_layer_forms_graphs_are_closed_before_the_next_forms_are_opened(monkeypatch):
    """Memory: every open graph holds its activation buffers, so only one table line's (a form under one
    protocol, with its baseline) may be open at a time."""
    from nsr_deploy.bench.suites import layer

    open_now, seen = set(), []
    real = layer.layer_runner

    class Counted:
        def __init__(self, backend, path, threads):
            self.key, self.runner = (backend, path), real(backend, path, threads)

        def __enter__(self):
            open_now.add(self.key)
            seen.append(set(open_now))
            return self.runner.__enter__()

        def __exit__(self, *exc):
            open_now.discard(self.key)
            return self.runner.__exit__(*exc)

    monkeypatch.setattr(layer, "layer_runner", Counted)
    settings = BenchSettings.preset("quick", suites=("layer",), backends=("onnxruntime", "openvino"),
                                    conv_forms=("grouped", "matmul"), layer=TINY_LAYER, threads=1, progress=False)
    result = run_bench(settings)
    assert result.data["crashed"] == [] and not open_now  # all closed at the end
    assert max(len(s) for s in seen) == 1 + 4  # a line's baseline and its four configurations together
    assert all(len({b for b, _ in s}) == 1 for s in seen), "two backends' graphs open at once"
    for s in seen:  # never two forms' or protocols' sparse graphs at once
        assert len({Path(p).name.rsplit("-", 1)[0] for _, p in s if "-conv-" not in Path(p).name}) <= 1, s


def test_the_bench_says_what_auto_runs_from_each_precisions_folder_and_the_twin_ratios():
    """From one run's patch rows: per precision, the faster of what a --target openvino folder holds (ONNX
    Runtime's engine built at load, OpenVINO's at that precision), and every runtime's sparse / twin ratio
    at each precision in the headline, beside its target."""
    from nsr_deploy.bench.report.summary import precision_figures
    from nsr_deploy.bench.suites.model import auto_choices, twin_ratios

    def row(backend, form, precision, median, twin=False):
        label = ("dense twin " if twin else "") + f"{backend} {form} {precision}"
        return {"engine": label, "backend": backend, "form": None if twin else form, "precision": precision,
                "dense_twin": twin, "median_ms": median, "p90_ms": median}

    rows = [row("onnxruntime", "nchwc-at-load", "fp32", 30.0), row("onnxruntime", "matmul", "fp32", 27.0, True),
            row("openvino", "folded", "fp32", 36.0), row("openvino", "matmul", "fp32", 29.0, True),
            row("openvino", "folded", "bf16", 17.5), row("openvino", "matmul", "bf16", 13.3, True),
            row("openvino", "folded", "int8", 40.0), row("openvino", "matmul", "int8", 9.0, True)]
    twin_ratios(rows)
    chosen = {a["precision"]: a for a in auto_choices(rows, "folded")}
    assert chosen["fp32"]["engine"] == "onnxruntime nchwc-at-load fp32" and chosen["fp32"]["vs_openvino"] == 0.833
    assert chosen["bf16"]["engine"] == "openvino folded bf16" and chosen["bf16"]["vs_openvino"] == 1.0
    assert chosen["int8"]["engine"] == "onnxruntime nchwc-at-load fp32"  # a slow int8 IR loses to fp32 there
    figures = {f["figure"]: f for f in precision_figures({"patch_batch": rows, "auto": list(chosen.values())})}
    assert figures["patch batch: openvino bf16 sparse / dense twin"]["value"] == round(17.5 / 13.3, 3)
    assert figures["patch batch: openvino int8 sparse / dense twin"]["target"] == "<= 1.5"
    assert figures["auto on a --target openvino --precision int8 folder: its choice / the folder's OpenVINO "
                   "engine"]["value"] == 0.75
