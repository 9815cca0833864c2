"""Per-image restore times of the three implementations of docs/contract.md, interleaved, for README
"Embedding the engines": Python (`Engine`, ONNX Runtime and OpenVINO, warmed), examples/cpp (a fresh
process per image: its time covers OpenVINO's first inference) and examples/web (onnxruntime-web WASM, one
thread, headless Chromium). Optionally a screenshot of the page.

    python tools/time_examples.py EXPORT_DIR IMAGE.png BUILD/nsr_restore [REPEATS] [SCREENSHOT.png]

EXPORT_DIR needs model.onnx in a portable form and model.xml (--target openvino --conv-form matmul).
"""

import base64
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from web_page import cpu_line, page

from nsr_deploy.runtimes import load


def main(export: Path, image: Path, exe: str, repeats: int = 3, screenshot: str | None = None) -> None:
    pixels = np.asarray(Image.open(image).convert("RGB"))
    with page(export, image.parent) as (tools, session):
        engines = {b: load(export, backend=b) for b in ("onnxruntime", "openvino")}
        times: dict = {}
        out = Path(tempfile.mkdtemp()) / "cpp.png"
        for tiling in ("reference", "cells"):
            for engine in engines.values():
                engine.tiling = tiling
                engine.restore(pixels)  # warm
            for _ in range(repeats):
                for backend, engine in engines.items():
                    t0 = time.perf_counter()
                    engine.restore(pixels)
                    times.setdefault((f"python {backend}", tiling), []).append(time.perf_counter() - t0)
                cmd = [exe, str(export), str(image), str(out), tiling]
                log = subprocess.run(cmd, capture_output=True, text=True).stderr
                seconds = float(re.search(r"restore ([0-9.]+) s", log).group(1))
                times.setdefault(("c++ openvino", tiling), []).append(seconds)
                got = tools.evaluate(session, f"nsrRestoreUrl('images/{image.name}', '{tiling}')")
                times.setdefault(("web onnxruntime-web", tiling), []).append(got["seconds"])
        for (impl, tiling), values in times.items():
            print(f"{impl:<22} {tiling:<9} median {statistics.median(values):6.2f} s  {[round(v, 2) for v in values]}")
        if screenshot:
            Path(screenshot).write_bytes(base64.b64decode(tools.call("Page.captureScreenshot", session)["data"]))
    print(f"CPU: {cpu_line()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], *(int(a) if a.isdigit() else a for a in sys.argv[4:]))
