"""examples/web (onnxruntime-web in Chromium, docs/contract.md): the page restores conformance inputs and
a real CSet5 image through the bundled sr-x2, on the WebAssembly and the WebGPU execution providers; its
window lists equal the vectors', its pixels equal `restore`'s within the contract's tolerance; a fixed-batch
export's short calls go to its batch-1 twin. Headless Chromium driven over the DevTools protocol on a pipe
(no extra Python package); the page served from 127.0.0.1 only. WebGPU runs on Chromium's software adapter
(SwiftShader), slowly: its cases use small inputs.

Needs Debian's `chromium` and npm (onnxruntime-web is installed by the test into
~/.cache/nsr-deploy/web, outside the repository).
"""

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, ROOT, within_contract_tolerance
from nsr_deploy.runtimes import load

# WebGPU without a GPU: Chromium's SwiftShader adapter, which needs the unsafe-WebGPU switch on Linux
WEBGPU_FLAGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]
# what must run on the WebGPU EP (ORT keeps shape arithmetic, int64 Gather / Concat / Unsqueeze, on the CPU)
COMPUTE_OPS = {"Conv", "MatMul", "Gemm", "Softmax", "ReduceMean", "DepthToSpace"}

PAGE = ROOT / "examples" / "web"
ORT_WEB = "onnxruntime-web@1.30.0"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install chromium)"
    if shutil.which("npm") is None:
        return "npm is not installed (apt-get install npm)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def ort_web() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nsr-deploy" / "web"
    dist = cache / "node_modules" / "onnxruntime-web" / "dist"
    if not (dist / "ort.wasm.min.mjs").exists():
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(cache),
                               ORT_WEB], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"npm install {ORT_WEB} failed: {done.stderr.strip().splitlines()[-1:]}")
    return cache / "node_modules"


class Handler(http.server.SimpleHTTPRequestHandler):
    """The page, with /node_modules/ from the npm cache and /export/, /images/ from the test's folders."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def __init__(self, *args, mounts: dict, **kw):
        self.mounts = mounts
        super().__init__(*args, directory=str(PAGE), **kw)

    def translate_path(self, path):
        for prefix, folder in self.mounts.items():
            if path.startswith(f"/{prefix}/"):
                rel = path.split("?", 1)[0][len(prefix) + 2:]
                return str(Path(folder) / rel)
        return super().translate_path(path)

    def log_message(self, *args):
        pass


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, profile: Path):
        to_child, self._send_fd = os.pipe()
        self._recv_fd, from_child = os.pipe()

        def fds():
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                      "--remote-debugging-pipe", f"--user-data-dir={profile}",
                                      *WEBGPU_FLAGS, "--window-size=1200,800", "about:blank"],
                                     preexec_fn=fds, pass_fds=(3, 4, to_child, from_child),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._id, self._buffer = 0, b""

    def call(self, method: str, session: str | None = None, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._send_fd, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._recv_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("exception", {}).get("description", str(result)))
        return result["result"].get("value")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self._send_fd)
        os.close(self._recv_fd)


@pytest.fixture(scope="module")
def grouped_export(tmp_path_factory) -> Path:
    """The default export of the bundled sr-x2: grouped, a fixed batch of 16 and its batch-1 twin."""
    from nsr_deploy.exporters.pipeline import ExportOptions, export
    from nsr_deploy.models import load_model

    folder = tmp_path_factory.mktemp("web-grouped") / "sr-x2"
    export(load_model("sr-x2"), folder, "onnx", ExportOptions(show_progress=False, conformance=True, threads=1))
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory, contract_exports, grouped_export):
    """(DevTools, port, folders): a headless Chromium and the page's server, each export folder mounted."""
    root = tmp_path_factory.mktemp("web")
    folders = {**contract_exports, "sr-x2-grouped": grouped_export}
    mounts = {"node_modules": ort_web(), "images": DATA / "CSet5", **{f"exports/{k}": v for k, v in folders.items()}}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, mounts=mounts))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tools = DevTools(root / "profile")
    try:
        yield tools, server.server_address[1], folders
    finally:
        tools.close()
        server.shutdown()


def open_page(page, name, ep="wasm"):
    tools, port, _ = page
    session = tools.open(f"http://127.0.0.1:{port}/index.html?export=exports/{name}/&ep={ep}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = tools.evaluate(session, "window.nsrReady ?? null")
        if state is True:
            return session
        if ep == "webgpu" and isinstance(state, str) and "WebGPU" in state and "adapter" in state:
            pytest.skip(f"this Chromium offers no WebGPU adapter: {state}")
        assert state is None, state  # the page's own error line
        time.sleep(0.2)
    raise AssertionError("the page did not load")


def assert_ran_on(got, ep):
    """ORT's own node placements: on WebGPU every compute node on its EP (no silent CPU fallback)."""
    for file, placed in got["placements"].items():
        if ep == "wasm":
            assert set(placed["nodes"]) == {"CPUExecutionProvider"}, (file, placed)
        else:
            assert got["adapter"]["architecture"], got["adapter"]
            on_cpu = set(placed["ops"].get("CPUExecutionProvider", {}))
            assert COMPUTE_OPS & set(placed["ops"]["WebGpuExecutionProvider"]) and not COMPUTE_OPS & on_cpu, placed


def restore_in_page(page, session, url, tiling):
    got = page[0].evaluate(session, f"nsrRestoreUrl({json.dumps(url)}, {json.dumps(tiling)})")
    rgba = np.frombuffer(base64.b64decode(got["rgba"]), np.uint8).reshape(got["height"], got["width"], 4)
    return got, rgba[..., :3]


def eight_bit_vectors(folder):
    """The vectors of plain 8-bit files: the page decodes through a canvas, which does not follow the
    contract's section 2 rules for 16-bit, alpha, palette or EXIF-rotated files."""
    vectors = json.loads((folder / "nsr.json").read_text())["conformance"]["vectors"]
    return [v for v in vectors if v.get("format", "8-bit") == "8-bit"]


def conformance_check(page, name, ep):
    folder = page[2][name]
    session = open_page(page, name, ep)
    for v in eight_bit_vectors(folder):
        got, rgb = restore_in_page(page, session, f"exports/{name}/{v['input']}", v["tiling"])
        want = json.loads((folder / v["windows"]).read_text())
        assert (got["window"], got["pad"], got["windows"]) == (want["window"], want["pad"], want["windows"]), v
        assert within_contract_tolerance(rgb, np.asarray(Image.open(folder / v["expected"]))), v
        assert got["ep"] == ep
    assert_ran_on(got, ep)


@pytest.mark.parametrize("name", ["tiny-static", "sr-x2", "sr-x2-grouped"])
def test_page_reproduces_the_conformance_vectors(page, name):
    conformance_check(page, name, "wasm")


def test_page_reproduces_the_conformance_vectors_on_webgpu(page):
    """The tiny fixed-batch grouped export (full and short calls) on the WebGPU EP: the sr-x2 vectors
    take minutes on a software adapter (docs/notes/webgpu.md)."""
    conformance_check(page, "tiny-static", "webgpu")


@pytest.mark.parametrize("ep", ["wasm", "webgpu"])
def test_page_runs_a_whole_image_on_batch_one(page, tmp_path, ep):
    """A whole small image through sr-x2's default (grouped, batch 16) export: one call of model-b1.onnx,
    not 16 copies through model.onnx; the pixels are `restore`'s."""
    crop = np.asarray(Image.open(DATA / "CSet5" / "butterfly.png").convert("RGB"))[:40, :48] if ep == "webgpu" \
        else np.asarray(Image.open(DATA / "CSet5" / "butterfly.png").convert("RGB"))[:120, :150]
    folder = page[2]["sr-x2-grouped"]
    Image.fromarray(crop).save(folder / f"crop-{ep}.png")
    session = open_page(page, "sr-x2-grouped", ep)
    got, rgb = restore_in_page(page, session, f"exports/sr-x2-grouped/crop-{ep}.png", "reference")
    with load(folder, backend="onnxruntime", tiling="reference") as engine:
        want = engine.restore(crop)
    assert got["calls"] == {"model-b1.onnx": 1}, got["calls"]
    assert within_contract_tolerance(rgb, want)
    assert_ran_on(got, ep)


@pytest.mark.parametrize("tiling", ["reference", "cells"])
def test_page_equals_restore_on_a_real_image(page, tiling):
    session = open_page(page, "sr-x2")
    got, rgb = restore_in_page(page, session, "images/butterfly.png", tiling)
    with load(page[2]["sr-x2"], backend="onnxruntime", tiling=tiling) as engine:
        want = engine.restore(np.asarray(Image.open(DATA / "CSet5" / "butterfly.png").convert("RGB")))
    assert len(got["windows"]) > 1
    assert within_contract_tolerance(rgb, want)


def test_page_reruns_on_a_new_tiling_and_the_same_file(page):
    """Through the page's own controls: the file input, then the tiling select, then the same file again."""
    tools, session = page[0], open_page(page, "sr-x2")
    tools.call("DOM.enable", session)
    root = tools.call("DOM.getDocument", session)["root"]["nodeId"]
    file_input = tools.call("DOM.querySelector", session, nodeId=root, selector="#file")["nodeId"]

    def pick_and_wait(count, action):
        action()
        deadline = time.monotonic() + 120
        while tools.evaluate(session, "nsrResults.length") < count:
            assert time.monotonic() < deadline, tools.evaluate(session, "document.getElementById('status').textContent")
            time.sleep(0.2)
        return tools.evaluate(session, f"nsrResults[{count - 1}]")

    image = str(DATA / "CSet5" / "butterfly.png")
    pick = lambda: tools.call("DOM.setFileInputFiles", session, files=[image], nodeId=file_input)  # noqa: E731
    first = pick_and_wait(1, pick)
    assert tools.evaluate(session, "document.getElementById('file').value") == ""  # reset for the next pick
    to_cells = "(t => { t.value = 'cells'; t.dispatchEvent(new Event('change')); })(document.getElementById('tiling'))"
    second = pick_and_wait(2, lambda: tools.evaluate(session, to_cells))
    third = pick_and_wait(3, pick)
    assert (first["tiling"], second["tiling"], third["tiling"]) == ("reference", "cells", "cells")
    assert first["windows"] != second["windows"] == third["windows"]
