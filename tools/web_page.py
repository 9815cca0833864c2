"""The examples/web page served from 127.0.0.1 with one export mounted, open in headless Chromium (the web
test's DevTools driver), for the timing tools; and the CPU line printed beside their figures."""

import functools
import http.server
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "examples")]  # conftest, and the web test's browser driver
from test_web_example import DevTools, Handler, ort_web  # noqa: E402

from nsr_deploy.core.machine import cpu_info  # noqa: E402


def cpu_line() -> str:
    cpu = cpu_info()
    return f"{cpu['model']}; {' '.join(cpu['flags']) or 'no AVX'}"


@contextmanager
def page(export: Path, images: Path, ep: str = "wasm"):
    """(DevTools, session) of the page on ``export`` (mounted as exports/m) with ``images`` beside it."""
    mounts = {"node_modules": ort_web(), "images": images, "exports/m": export}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, mounts=mounts))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tools = DevTools(Path(tempfile.mkdtemp(prefix="nsr-chromium-")))
    try:
        session = tools.open(f"http://127.0.0.1:{server.server_address[1]}/index.html?export=exports/m/&ep={ep}")
        while (state := tools.evaluate(session, "window.nsrReady ?? null")) is not True:
            if isinstance(state, str):
                raise SystemExit(f"error: the page: {state}")
            time.sleep(0.2)
        yield tools, session
    finally:
        tools.close()
        server.shutdown()
