"""What a whole small image costs an app per output pixel, against one full call of the engine's main file,
in examples/cpp (OpenVINO C++ API, its own --bench) and examples/web (onnxruntime-web, WASM or WebGPU, one
thread, headless Chromium), taken in turns so that both see the same machine.

    python tools/per_pixel_cost.py EXPORT_DIR IMAGE.png BUILD/nsr_restore [REPEATS] [wasm|webgpu]

A fixed-batch export with its batch-1 twin (the default) runs a whole image as one window; without the
twin the app would send the batch's worth of copies. The full call is the batch of `cells` windows of
full cells. Prints the medians and their ratio (whole / full call: at most 1.5 is the contract's aim).
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

from PIL import Image
from web_page import cpu_line, page


def main(export: Path, image: Path, exe: str, repeats: int = 5, ep: str = "wasm") -> None:
    doc = json.loads((export / "nsr.json").read_text())
    cells = doc["semantics"]["tiling"]["cells"]
    side, s2 = cells["cell_max"] + 2 * cells["halo"], doc["semantics"]["scale"] ** 2
    w, h = Image.open(image).size
    with page(export, image.parent, ep) as (tools, session):
        ns = {"c++ whole": [], "c++ full call": [], "web whole": [], "web full call": []}
        calls = None
        for _ in range(repeats):
            done = subprocess.run([exe, str(export), str(image), "/dev/null", "reference", "--bench", "1"],
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout)["ns_per_output_pixel"][0]
            ns["c++ whole"].append(row["whole"])
            ns["c++ full call"].append(row["full_call"])
            got = tools.evaluate(session, f"nsrRestoreUrl('images/{image.name}', 'reference')")
            calls = got["calls"]
            ns["web whole"].append(got["seconds"] / (h * w * s2) * 1e9)
            full = tools.evaluate(session, f"nsrTimeFullCall({side})")
            ns["web full call"].append(full["seconds"] / (full["windows"] * side * side * s2) * 1e9)
    print(f"CPU: {cpu_line()}")
    print(f"{image.name} {w}x{h} (whole, web calls {calls}); full call: a batch of {side}x{side} windows; "
          f"web on {ep}; median of {repeats}, in turns")
    med = {k: statistics.median(v) for k, v in ns.items()}
    for app in ("c++", "web"):
        whole, full = med[f"{app} whole"], med[f"{app} full call"]
        print(f"{app:<4} ns per output pixel: whole image {whole:8.1f}  full call {full:8.1f}  "
              f"whole / full {whole / full:.2f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), Path(args[1]), args[2], *(int(a) for a in args[3:4]), *args[4:5])
