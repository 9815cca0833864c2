"""The I/O contract (docs/contract.md): nsr.json against the shipped schema, the embedded contracts, the
documented window-list pseudo-code against the planner, and the conformance vectors: they regenerate
identically, and an implementation written from the document alone (numpy + the bare ONNX session,
none of nsr_deploy's tiling) reproduces them."""

import json
import math
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from conftest import TINY_TILED, export_tiny_tiled, within_contract_tolerance
from nsr_deploy.exporters.conformance import png_bytes
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.host.images import read_image, upscale_alpha
from nsr_deploy.runtimes.host.tiling import make_plan
from nsr_deploy.runtimes.openvino.runner import read_ir_manifest

SCHEMA = json.loads((resources.files("nsr_deploy.runtimes") / "nsr.schema.json").read_text())
CFG = TINY_TILED


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return {"grouped": export_tiny_tiled(root, "grouped", 4, "openvino"),
            "matmul": export_tiny_tiled(root, "matmul", None)}


def manifest(folder):
    return json.loads((folder / "nsr.json").read_text())


# -- nsr.json and the schema -----------------------------------------------------------------------
def test_schema_is_valid_and_every_export_satisfies_it(folders):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for folder in folders.values():
        doc = manifest(folder)
        jsonschema.validate(doc, SCHEMA)
        assert doc["contract_version"] == 1 and doc["conformance"]["vectors"]


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("targets"),
    lambda d: d.pop("contract_version"),
    lambda d: d["targets"]["onnx"].__setitem__("file", "../elsewhere.onnx"),
    lambda d: d["targets"]["onnx"].__setitem__("file", "/abs/model.onnx"),
    lambda d: d["targets"]["onnx"].__setitem__("sha256", "not-a-digest"),
    lambda d: d["io"].__setitem__("static_batch", 0),
    lambda d: d["semantics"]["tiling"]["reference"].__setitem__("stride", 0),
    lambda d: d["semantics"]["tiling"]["cells"].pop("halo"),
    lambda d: d["model"]["config"].__setitem__("channels", 2),
    lambda d: d["conformance"]["vectors"][0].__setitem__("expected", "../../etc/passwd"),
])
def test_schema_rejects_broken_manifests(folders, breakage):
    doc = manifest(folders["grouped"])
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_embedded_contract_has_targets_and_output_names_match_the_graph(folders):
    for folder in folders.values():
        doc = manifest(folder)
        model = onnx.load(str(folder / "model.onnx"))
        embedded = json.loads({p.key: p.value for p in model.metadata_props}["nsr_manifest"])
        own = embedded["targets"]["onnx"]
        assert own["file"] == "model.onnx" and own["static_batch"] == doc["io"]["static_batch"]
        assert embedded["semantics"] == doc["semantics"] and embedded["contract_version"] == 1
        y = doc["io"]["outputs"][0]
        dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        assert dims[2:] == y["shape"][2:] == ["out_height", "out_width"]
        assert doc["io"]["dynamic_axes"]["y"] in ({"2": "out_height", "3": "out_width"},
                                                  {"0": "batch", "2": "out_height", "3": "out_width"})
        assert y["out_height"] == f"height*{CFG.scale}"
    ir = read_ir_manifest(folders["grouped"] / "model.xml")
    assert ir["targets"]["openvino"] == {"file": "model.xml", "weights": "model.bin", "precision": "fp32"}
    assert ir["contract_version"] == 1


# -- the documented window lists ------------------------------------------------------------------
def documented_plan(h, w, tiling: dict, mode: str, batch):
    """docs/contract.md section 3, transcribed: (window size, [(y, x, ky0, kx0, ky1, kx1, weight)])."""
    t = tiling[mode]
    if h < t["whole_image_if_side_below"] or w < t["whole_image_if_side_below"]:
        return (h, w), [(0, 0, 0, 0, h, w, 1.0)]
    if mode == "reference":
        pad, p, s = t["reflect_pad"], t["patch"], t["stride"]
        hp, wp = h + 2 * pad, w + 2 * pad
        nh, nw = (hp - p) // s + 1, (wp - p) // s + 1
        ch, cw = hp - ((nh - 1) * s + p), wp - ((nw - 1) * s + p)
        main, strip = t["main_weight"], t["strip_weight"]
        corners = [(ch // 2 + i * s, cw // 2 + j * s, main) for i in range(nh) for j in range(nw)]
        corners += [(0, j * s, strip) for j in range(nw)] + [(i * s, wp - p, strip) for i in range(nh)]
        corners += [(hp - p, cw + j * s, strip) for j in range(nw)] + [(ch + i * s, 0, strip) for i in range(nh)]
        return (p, p), [(py - pad, px - pad, pad, pad, p - pad, p - pad, wt) for py, px, wt in corners]
    rows, cols = math.ceil(h / t["cell_max"]), math.ceil(w / t["cell_max"])
    halo = t["halo"]
    if batch and batch > 1:
        def cost(rc):
            r, c = rc
            return (math.ceil(r * c / batch) * batch * (math.ceil(h / r) + 2 * halo) * (math.ceil(w / c) + 2 * halo),
                    r * c)
        slack = range(t["grid_slack"] + 1)
        cands = [(rows + a, cols + b) for a in slack for b in slack
                 if (a, b) == (0, 0) or (h // (rows + a) >= t["min_cell"] and w // (cols + b) >= t["min_cell"])]
        rows, cols = min(cands, key=cost)
    ycut = [round(i * h / rows) for i in range(rows + 1)]
    xcut = [round(i * w / cols) for i in range(cols + 1)]
    size = (max(np.diff(ycut)) + 2 * halo, max(np.diff(xcut)) + 2 * halo)
    assert t["border"] == "clamp"

    def place(start, window, extent):
        return min(max(0, start - halo), max(0, extent - window))

    windows = []
    for y0, y1 in zip(ycut, ycut[1:]):
        wy = place(y0, size[0], h)
        for x0, x1 in zip(xcut, xcut[1:]):
            wx = place(x0, size[1], w)
            windows.append((wy, wx, y0 - wy, x0 - wx, y1 - wy, x1 - wx, 1.0))
    return size, windows


@pytest.mark.parametrize("mode", ["reference", "cells"])
def test_documented_window_lists_equal_the_planner(folders, mode):
    tiling = manifest(folders["grouped"])["semantics"]["tiling"]
    rng = np.random.default_rng(0)
    sizes = [(95, 300), (300, 95), (96, 96), (97, 131), (160, 161), (481, 237)]
    sizes += [tuple(int(v) for v in rng.integers(90, 700, 2)) for _ in range(30)]
    for h, w in sizes:
        for batch in (None, 1, 4, 16):
            plan = make_plan(mode, h, w, CFG.patch_size, True, CFG.receptive_radius(), batch)
            size, windows = documented_plan(h, w, tiling, mode, batch)
            assert (plan.window_h, plan.window_w) == size, (h, w, batch)
            assert [(t.y, t.x, t.ky0, t.kx0, t.ky1, t.kx1, t.weight) for t in plan.tiles] == windows, (h, w, batch)


# -- conformance vectors ----------------------------------------------------------------------------
def read_png(path):
    return np.asarray(Image.open(path))


def test_vectors_regenerate_identically(folders, tmp_path):
    again = export_tiny_tiled(tmp_path, "grouped", 4)
    first, second = manifest(folders["grouped"])["conformance"], manifest(again)["conformance"]
    assert first == second and {v["tiling"] for v in first["vectors"]} == {"reference", "cells"}
    for v in first["vectors"]:
        for key in ("input", "windows", "expected"):
            assert (folders["grouped"] / v[key]).read_bytes() == (again / v[key]).read_bytes(), v[key]


def test_python_engine_matches_the_vectors(folders):
    for folder in folders.values():
        section = manifest(folder)["conformance"]
        for v in section["vectors"]:
            image, expected = read_image(folder / v["input"], CFG.channels), read_png(folder / v["expected"])
            windows = json.loads((folder / v["windows"]).read_text())
            h, w = image.pixels.shape[:2]
            assert expected.shape == (h * CFG.scale, w * CFG.scale, 3 + (image.alpha is not None)), v
            for backend in ["onnxruntime"] + (["openvino"] if "openvino" in manifest(folder)["targets"] else []):
                with load(folder, backend=backend, threads=1, tiling=v["tiling"]) as engine:
                    plan = engine.plan(h, w)
                    assert [[t.y, t.x, t.ky0, t.kx0, t.ky1, t.kx1, t.weight] for t in plan.tiles] \
                        == windows["windows"]
                    assert within_contract_tolerance(engine.restore(image.pixels), expected[..., :3]), (backend, v)


@pytest.mark.parametrize("form", ["grouped", "matmul"])
def test_expected_outputs_are_what_restore_writes(folders, form, tmp_path):
    """`nsr-deploy restore` of each vector's input file writes the vector's expected file, pixel for pixel
    (alpha included): the same engine file, one thread, the CLI's own reader and writer."""
    folder = folders[form]
    vectors = manifest(folder)["conformance"]["vectors"]
    for tiling in ("reference", "cells"):
        mine = [v for v in vectors if v["tiling"] == tiling]
        inputs = [str(folder / v["input"]) for v in mine]
        done = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "restore", *inputs, "-m", str(folder),
                               "-o", f"{tmp_path / tiling}/", "--tiling", tiling, "--backend", "onnxruntime",
                               "--threads", "1"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        for v in mine:
            got = Image.open(tmp_path / tiling / Path(v["input"]).name)
            want = Image.open(folder / v["expected"])
            assert got.mode == want.mode and np.array_equal(np.asarray(got), np.asarray(want)), v


def test_vectors_cover_the_input_rules(folders):
    """Every input rule of docs/contract.md section 2 has its vector, decoded as the section says."""
    doc = manifest(folders["grouped"])
    by_name = {Path(v["input"]).stem: folders["grouped"] / v["input"] for v in doc["conformance"]["vectors"]}
    assert {"rgb16", "grey16", "grey-alpha", "palette", "rgba", "exif"} <= set(by_name)
    assert Image.open(by_name["rgb16"]).mode == "RGB" and Image.open(by_name["palette"]).mode == "P"
    rgba = read_image(by_name["rgba"], 3)
    stored = np.asarray(Image.open(by_name["exif"]))
    assert np.array_equal(read_image(by_name["exif"], 3).pixels, np.rot90(stored, -1))  # orientation 6
    assert rgba.alpha is not None and read_image(by_name["grey-alpha"], 3).alpha is not None
    assert read_image(by_name["palette"], 3).alpha.min() < 255  # its tRNS is alpha


def test_sixteen_bit_rules_of_the_contract(tmp_path):
    """Section 2's 16-bit rules, on every 16-bit value: grey without alpha rounds, (v + 128) // 257;
    colour keeps the high byte, v >> 8."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    (tmp_path / "grey.png").write_bytes(png_bytes(values, 0, 16))
    (tmp_path / "rgb.png").write_bytes(png_bytes(np.dstack([values, values[::-1], values.T]), 2, 16))
    v = values.astype(np.int64)
    assert np.array_equal(read_image(tmp_path / "grey.png", 1).pixels, (v + 128) // 257)
    assert np.array_equal(read_image(tmp_path / "grey.png", 1).pixels, np.rint(v * 255 / 65535))
    assert np.array_equal(read_image(tmp_path / "rgb.png", 3).pixels, np.dstack([v, v[::-1], v.T]) >> 8)


def test_alpha_is_resized_as_the_contract_says():
    """Section 2's alpha rule against an independent transcription of it (Pillow's BICUBIC on an 8-bit
    plane: a = -0.5, weights in 22-bit fixed point, horizontal pass then vertical, each rounded and clipped)."""
    rng = np.random.default_rng(1)
    for h, w, s in ((7, 11, 2), (13, 5, 3), (9, 9, 4)):
        alpha = np.where(rng.random((h, w)) < 0.5, 0, 255).astype(np.uint8)
        alpha[::3] = rng.integers(0, 256, alpha[::3].shape)
        assert np.array_equal(upscale_alpha(alpha, (h * s, w * s)), documented_bicubic(alpha, h * s, w * s))


def documented_bicubic(plane: np.ndarray, oh: int, ow: int) -> np.ndarray:
    def taps(n_in, n_out):
        scale = n_in / n_out
        support = 2.0 * max(scale, 1.0)
        rows = []
        for o in range(n_out):
            centre = (o + 0.5) * scale
            lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
            x = (np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0)
            ax = np.abs(x)
            far = np.where(ax < 2, (((ax - 5) * ax + 8) * ax - 4) * -0.5, 0)
            k = np.where(ax < 1, (1.5 * ax - 2.5) * ax * ax + 1, far)
            k = k / k.sum() * (1 << 22)
            rows.append((lo, np.where(k < 0, np.trunc(k - 0.5), np.trunc(k + 0.5)).astype(np.int64)))
        return rows

    def one_axis(a, rows):  # along the last axis
        out = np.empty(a.shape[:-1] + (len(rows),), np.int64)
        for o, (lo, k) in enumerate(rows):
            out[..., o] = (a[..., lo:lo + len(k)].astype(np.int64) * k).sum(-1) + (1 << 21)
        return np.clip(out >> 22, 0, 255)

    mid = one_axis(plane, taps(plane.shape[1], ow))
    return one_axis(mid.T, taps(plane.shape[0], oh)).T.astype(np.uint8)


def contract_restore(session, batch, image, windows, scale):
    """docs/contract.md sections 1, 2, 4 and 5 with numpy and a bare ONNX Runtime session."""
    h, w = image.shape[:2]
    x = np.float32(image.transpose(2, 0, 1)) / np.float32(255)
    wh, ww = windows["window"]
    pad = windows["pad"]

    def reflect(i, n):  # numpy 'reflect' (edge not repeated), valid while pad < n
        i = np.abs(i)
        return np.where(i >= n, 2 * (n - 1) - i, i)

    out = np.zeros((3, h * scale, w * scale), np.float32)
    weight = np.zeros((1, h * scale, w * scale), np.float32)
    assert pad < h and pad < w
    for y, x0, ky0, kx0, ky1, kx1, wt in windows["windows"]:
        rows, cols = reflect(np.arange(y, y + wh), h), reflect(np.arange(x0, x0 + ww), w)
        win = x[:, rows][:, :, cols][None]
        inside = ((np.arange(y, y + wh) >= 0) & (np.arange(y, y + wh) < h))[:, None] \
            & ((np.arange(x0, x0 + ww) >= 0) & (np.arange(x0, x0 + ww) < w))[None]
        valid = np.float32(inside)[None, None]
        n = batch or 1
        y_out = session.run(["y"], {"x": np.repeat(win, n, 0), "valid": np.repeat(valid, n, 0)})[0][0]
        s = scale
        kept = y_out[:, ky0 * s:ky1 * s, kx0 * s:kx1 * s]
        dst = (slice(None), slice((y + ky0) * s, (y + ky1) * s), slice((x0 + kx0) * s, (x0 + kx1) * s))
        out[dst] += np.float32(wt) * kept
        weight[dst] += np.float32(wt)
    out /= weight
    return np.rint(np.clip(out * np.float32(255), 0, 255)).astype(np.uint8).transpose(1, 2, 0)


def test_an_implementation_from_the_document_reproduces_the_vectors(folders):
    folder = folders["grouped"]
    doc = manifest(folder)
    session = ort.InferenceSession(str(folder / doc["targets"]["onnx"]["file"]), providers=["CPUExecutionProvider"])
    for v in doc["conformance"]["vectors"]:
        if v["format"] != "8-bit":  # the other input rules: tests/examples/test_cpp_example.py (libpng)
            continue
        windows = json.loads((folder / v["windows"]).read_text())
        got = contract_restore(session, doc["io"]["static_batch"], read_png(folder / v["input"]), windows,
                               doc["semantics"]["scale"])
        assert within_contract_tolerance(got, read_png(folder / v["expected"])), v
