"""The headline figures of one run, beside the project's performance goals and the paper.

Read off the suites' rows, never measured again, so every figure comes from the same run:

* model, patch batch: the best exported engine (lowest median) against its dense twin in the same
  runtime, and against PyTorch eager on the same patches;
* layer (Figure 5): fixed model size at k = 4 against the backend's own baseline, and the worst fixed
  FLOPs ratio over k, each for the backend's best conv form;
* image: the best ``cells`` engine's speed-up over the reference's own evaluation path;
* the best exported engine's effective GFLOP/s as a fraction of this machine's GEMM peak at that engine's
  precision (fp32 sgemm for fp32, the bf16 GEMM for bf16, ...), measured in the same run.

Goals are printed for orientation; the bench passes or fails only on parity.
"""

from __future__ import annotations

from nsr_deploy.bench import paper
from nsr_deploy.bench.report.table import Table, fmt
from nsr_deploy.core.capabilities import EXPORTED_BACKENDS as EXPORTED


def _best(rows: list[dict], key: str = "median_ms") -> dict | None:
    ok = [r for r in rows if r.get(key) is not None and "error" not in r]
    return min(ok, key=lambda r: r[key]) if ok else None


def model_figures(model: dict) -> list[dict]:
    engines = [r for r in model["patch_batch"] if r["backend"] in EXPORTED and not r["dense_twin"]]
    best = _best(engines)
    if best is None:
        return []
    who = best["engine"]
    out = [{"figure": "patch batch: best engine / its dense twin",
            "value": best.get("vs_dense_twin"), "engine": who, "target": "<= 1.10"},
           {"figure": "patch batch: best engine / PyTorch eager",
            "value": best.get("vs_torch_eager"), "engine": who, "target": "<= 0.75"},
           {"figure": f"patch batch: best engine's GFLOP/s / {best.get('peak', 'sgemm')}", "value": best.get("of_peak"),
            "engine": who, "target": ">= 0.80"}]
    cells = _best([r for r in model["image"] if r["backend"] in EXPORTED and r.get("tiling") == "cells"])
    if cells is not None:
        h, w = model["protocol"]["image"]
        out.append({"figure": f"image {h}x{w}: best cells engine, speed-up",
                    "value": cells["speedup_vs_reference_path"], "engine": cells["engine"],
                    "target": ">= 2.5 (at 512x512)"})
    return out


# sparse / dense twin at the same precision, same runtime: what NSR's cost claim asks at each precision
PRECISION_TARGETS = {("openvino", "fp32"): "<= 1.25", ("openvino", "bf16"): "<= 1.3", ("openvino", "int8"): "<= 1.5",
                     ("onnxruntime", "fp32"): "<= 1.10", ("onnxruntime", "int8"): "<= 1.5"}


def precision_figures(model: dict) -> list[dict]:
    """Per runtime and precision, its best sparse engine / the dense twin at that precision; and what ``auto``
    runs from a --target openvino folder of each precision on this machine."""
    out = []
    for (backend, precision), target in PRECISION_TARGETS.items():
        rows = [r for r in model["patch_batch"] if r["backend"] == backend and r["precision"] == precision
                and not r["dense_twin"] and r.get("vs_dense_twin") is not None]
        best = _best(rows)
        if best:
            out.append({"figure": f"patch batch: {backend} {precision} sparse / dense twin",
                        "value": best["vs_dense_twin"], "engine": best["engine"], "target": target})
    for a in model.get("auto", []):
        out.append({"figure": f"auto on a {a['folder']} folder: its choice / the folder's OpenVINO engine",
                    "value": a["vs_openvino"], "engine": a["engine"], "target": "-"})
    return out


def load_time_figures(model: dict) -> list[dict]:
    """ONNX Runtime's load-time NCHWc engine against the exported ``nchwc`` form on the same
    (interleaved) patches, and the pixels it computes for the run's image (a small one: one patch)."""
    by_form = {r["form"]: r for r in model["patch_batch"] if r["backend"] == "onnxruntime" and not r["dense_twin"]
               and r.get("median_ms") is not None}
    out = []
    if "nchwc-at-load" in by_form and "nchwc" in by_form:
        out.append({"figure": "patch batch: nchwc-at-load / nchwc export", "engine": "onnxruntime nchwc-at-load",
                    "value": round(by_form["nchwc-at-load"]["median_ms"] / by_form["nchwc"]["median_ms"], 3),
                    "target": "<= 1.05"})
    image = [r for r in model["image"] if r.get("form") == "nchwc-at-load" and r.get("compute_ratio") is not None]
    if image:
        h, w = model["protocol"]["image"]
        out.append({"figure": f"image {h}x{w}: pixels computed / image pixels", "engine": "onnxruntime nchwc-at-load",
                    "value": max(r["compute_ratio"] for r in image), "target": "<= 1.1 (at 150x150)"})
    return out


def layer_figures(layer: dict) -> list[dict]:
    rows = [r for r in layer["rows"] if r.get("ratio") is not None]
    out = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        size4 = _best([r for r in mine if r["protocol"] == "fixed size" and r["k"] == 4], "ratio")
        if size4:
            out.append({"figure": f"layer {backend}: fixed size k=4 / baseline", "value": size4["ratio"],
                        "engine": f"{backend} {size4['variant']}", "target": "<= 0.35",
                        "paper": round(paper.paper_ratio("fixed size", 4), 2)})
        worst = {}
        for r in mine:
            if r["protocol"] == "fixed FLOPs":
                worst[r["variant"]] = max(worst.get(r["variant"], 0.0), r["ratio"])
        if worst:
            form = min(worst, key=worst.get)
            out.append({"figure": f"layer {backend}: fixed FLOPs / baseline, worst k", "value": worst[form],
                        "engine": f"{backend} {form}", "target": "<= 1.10", "paper": "1.06-1.08"})
    return out


def headline(sections: dict) -> list[dict]:
    out = []
    if "model" in sections:
        out += model_figures(sections["model"]) + precision_figures(sections["model"]) \
            + load_time_figures(sections["model"])
    if "layer" in sections:
        out += layer_figures(sections["layer"])
    return out


def headline_table(figures: list[dict]) -> Table:
    rows = [[f["figure"], f["engine"], fmt(f["value"], ".2f"), f["target"], fmt(f.get("paper"), ".2f")]
            for f in figures]
    return Table("summary: headline figures of this run (best exported engine; latency ratios, lower is faster, "
                 "unless the goal says >=)",
                 ["figure", "engine", "value", "goal", "paper"], rows,
                 ["goals are for orientation: the exit code depends on parity (and crashes) only"], left=2)
