"""`nsr-deploy restore --ray`: a local Ray cluster (2 actors x 1 thread) restores CSet14 and writes the
very bytes the single-process command writes; a broken image fails alone; a rerun resumes."""

import hashlib
import json
import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import DATA
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel
from nsr_deploy.models.network import NSRNet

# find_spec, not an import: ray must first be imported by start_local_cluster (it sets loopback mode)
pytestmark = [pytest.mark.skipif(find_spec("ray") is None,
                                 reason="ray[data] is not installed (pip install 'nsr-deploy[serve]')"),
              pytest.mark.filterwarnings("ignore:.*is deprecated:DeprecationWarning")]  # Ray Data's own settings

N = 7  # images restored
TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)


@pytest.fixture(scope="module")
def cluster():
    """A loopback-only local cluster with 2 CPUs for the whole module, shut down at the end."""
    from nsr_deploy.runtimes.host.ray_restore import start_local_cluster

    start_local_cluster(num_cpus=2)
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny exported engine and a folder of every other CSet14 image (7, one grey) plus one broken file."""
    root = tmp_path_factory.mktemp("ray")
    torch.manual_seed(0)
    loaded = LoadedModel(NSRNet(TINY).eval(), "tiny", "built", "0" * 64, "tiny")
    export(loaded, root / "engine", "onnx", ExportOptions(conv_form="matmul", show_progress=False))
    images = root / "in"
    images.mkdir()
    for path in sorted((DATA / "CSet14").iterdir())[::2]:
        shutil.copy(path, images / path.name)
    (images / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def _restore(*args):
    result = CliRunner().invoke(main, ["restore", *map(str, args), "--threads", "1", "--json"])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def ray_run(cluster, corpus):
    """The corpus restored once by 2 Ray workers into ``out-ray``: (exit code, stdout, stderr), whichever test
    asks first."""
    return _restore(corpus / "in", "-m", corpus / "engine", "-o", corpus / "out-ray", "--ray", "--workers", "2")


def test_ray_equals_single_process_and_a_broken_image_fails_alone(ray_run, corpus):
    code, out, err = ray_run
    assert code == 1, err  # one image failed, the job went on
    report = json.loads(out)
    assert (report["restored"], report["skipped"], report["failed"]) == (N, 0, 1)
    assert report["ray"]["workers"] == 2 and report["threads"] == 1
    broken = next(o for o in report["images"] if o["status"] == "failed")
    assert broken["input"].endswith("broken.png") and "not a readable image" in broken["error"]
    grey = next(o for o in report["images"] if o["input"].endswith("bridge.png"))
    assert grey["status"] == "restored" and "converted to RGB" in grey["warnings"][0]

    code, out, err = _restore(corpus / "in", "-m", corpus / "engine", "-o", corpus / "out-one")
    assert code == 1, err
    single = json.loads(out)
    by_ray = {o["input"]: o["output"] for o in report["images"]}
    assert [o["input"] for o in single["images"]] == list(by_ray)  # same jobs, same order
    for o in single["images"]:
        if not o["ok"]:
            assert by_ray[o["input"]] is None
            continue
        name = Path(o["output"]).relative_to(corpus / "out-one")
        assert by_ray[o["input"]] == str(corpus / "out-ray" / name)  # the same name in the other folder
        assert (corpus / "out-ray" / name).read_bytes() == Path(o["output"]).read_bytes(), name


def test_rerun_skips_what_exists(cluster, corpus, ray_run):
    assert ray_run[0] == 1, ray_run[2]  # the first run: every image but the broken one written
    out_dir = corpus / "out-ray"
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    assert len(before) == N
    code, out, err = _restore(corpus / "in", "-m", corpus / "engine", "-o", out_dir, "--ray", "--workers", "2")
    assert code == 1, err  # the broken image is tried again and fails again
    report = json.loads(out)
    assert (report["restored"], report["skipped"], report["failed"]) == (0, N, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == before  # nothing rewritten


def test_a_pool_larger_than_the_cluster_is_refused(cluster, corpus):
    code, _, err = _restore(corpus / "in", "-m", corpus / "engine", "-o", corpus / "out-big", "--ray",
                            "--workers", "3")
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]  # warnings: one line each
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: 3 workers x 1 threads need 3 CPUs")
    assert not (corpus / "out-big").exists()


def test_workers_without_ray_is_a_user_error(corpus):
    code, _, err = _restore(corpus / "in", "-m", corpus / "engine", "-o", corpus / "x", "--workers", "2")
    assert code == 2 and err == "error: --workers needs --ray\n"


def test_a_broken_model_is_one_line_before_any_actor_starts(corpus):
    bad = corpus / "bad-engine"
    shutil.copytree(corpus / "engine", bad)
    (bad / "model.onnx").write_bytes(b"not a model")
    manifest = json.loads((bad / "nsr.json").read_text())  # a corrupt file the manifest vouches for
    manifest["targets"]["onnx"]["sha256"] = hashlib.sha256(b"not a model").hexdigest()
    (bad / "nsr.json").write_text(json.dumps(manifest))
    code, _, err = _restore(corpus / "in", "-m", bad, "-o", corpus / "out-bad", "--ray")
    assert code == 2 and err.startswith("error: ") and "not a readable ONNX model" in err and err.count("\n") == 1
    assert not (corpus / "out-bad").exists()


def test_bench_ray_suite_reports_images_per_second_for_1_and_2_workers(cluster, corpus):
    from nsr_deploy.bench.api import run_bench
    from nsr_deploy.bench.settings import BenchSettings

    torch.manual_seed(0)
    loaded = LoadedModel(NSRNet(TINY).eval(), "tiny", "built", "0" * 64, "tiny")
    settings = BenchSettings.preset("quick", suites=("ray",), backends=("onnxruntime",), threads=2, progress=False)
    report = run_bench(settings, loaded)
    ray = report.data["suites"]["ray"]
    assert ray["error"] is None and not ray["skipped"] and ray["dataset"] == "CSet14"
    assert [p["workers"] for p in ray["pools"]] == [1, 2]
    for pool in ray["pools"]:
        assert pool["images"] == 4 and pool["threads_per_worker"] == 1
        assert pool["images_per_s"] == pytest.approx(pool["images"] / pool["seconds"], rel=0.02)
    one, two = ray["pools"]
    assert two["speedup"] == pytest.approx(two["images_per_s"] / one["images_per_s"], abs=0.01)
    text = report.render()
    assert "ray: corpus restore throughput" in text and "restore --ray" in text


def test_bench_without_ray_suite_starts_no_cluster_by_default():
    from nsr_deploy.bench.settings import BenchSettings

    assert "ray" not in BenchSettings().suites and "ray" not in BenchSettings.preset("quick").suites
