"""examples/web (onnxruntime-web in Chromium, docs/contract.md): the page restores conformance inputs and
a real CSet5 image through the bundled sr-x2; its window lists equal the vectors', its pixels equal
`restore`'s within the contract's tolerance. Headless Chromium driven over the DevTools protocol on a
pipe (no extra Python package); the page served from 127.0.0.1 only.

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
                                      "--window-size=1200,800", "about:blank"],
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
def page(tmp_path_factory, contract_exports):
    """(DevTools, port, folders): a headless Chromium and the page's server, each export folder mounted."""
    root = tmp_path_factory.mktemp("web")
    folders = contract_exports
    mounts = {"node_modules": ort_web(), "images": DATA / "CSet5", **{f"exports/{k}": v for k, v in folders.items()}}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, mounts=mounts))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tools = DevTools(root / "profile")
    try:
        yield tools, server.server_address[1], folders
    finally:
        tools.close()
        server.shutdown()


def open_page(page, name):
    tools, port, _ = page
    session = tools.open(f"http://127.0.0.1:{port}/index.html?export=exports/{name}/")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = tools.evaluate(session, "window.nsrReady ?? null")
        if state is True:
            return session
        assert state is None, state  # the page's own error line
        time.sleep(0.2)
    raise AssertionError("the page did not load")


def restore_in_page(page, session, url, tiling):
    got = page[0].evaluate(session, f"nsrRestoreUrl({json.dumps(url)}, {json.dumps(tiling)})")
    rgba = np.frombuffer(base64.b64decode(got["rgba"]), np.uint8).reshape(got["height"], got["width"], 4)
    return got, rgba[..., :3]


@pytest.mark.parametrize("name", ["tiny-static", "sr-x2"])
def test_page_reproduces_the_conformance_vectors(page, name):
    folder = page[2][name]
    session = open_page(page, name)
    for v in json.loads((folder / "nsr.json").read_text())["conformance"]["vectors"]:
        got, rgb = restore_in_page(page, session, f"exports/{name}/{v['input']}", v["tiling"])
        want = json.loads((folder / v["windows"]).read_text())
        assert (got["window"], got["pad"], got["windows"]) == (want["window"], want["pad"], want["windows"]), v
        assert within_contract_tolerance(rgb, np.asarray(Image.open(folder / v["expected"]))), v


@pytest.mark.parametrize("tiling", ["reference", "cells"])
def test_page_equals_restore_on_a_real_image(page, tiling):
    session = open_page(page, "sr-x2")
    got, rgb = restore_in_page(page, session, "images/butterfly.png", tiling)
    with load(page[2]["sr-x2"], backend="onnxruntime", tiling=tiling) as engine:
        want = engine.restore(np.asarray(Image.open(DATA / "CSet5" / "butterfly.png").convert("RGB")))
    assert len(got["windows"]) > 1
    assert within_contract_tolerance(rgb, want)
