"""Engines behind one interface, host-side tiling and image I/O. Imports no torch.

    from nsr_deploy.runtimes import load
    with load("out/") as engine:              # a folder with nsr.json, a .onnx, .xml, .engine,
        big = engine.restore(image)           # or a checkpoint / bundled model name (torch backend)
"""

from __future__ import annotations

import importlib
from pathlib import Path

from nsr_deploy.core.budgets import check_threads
from nsr_deploy.core.capabilities import BACKEND_OF_SUFFIX, BACKENDS, REFERENCE_BACKEND, TARGET_OF_BACKEND
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.core.safe_read import parse_json
from nsr_deploy.runtimes.contract import read_engine_files, verified_files


def runner_class(backend: str):
    if backend not in BACKENDS:
        raise NSRError(f"unknown backend {backend!r} (choose from auto, {', '.join(BACKENDS)})")
    spec = BACKENDS[backend]
    try:
        return getattr(importlib.import_module(spec.runner_module), spec.runner_class)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("nsr_deploy"):
            raise BackendUnavailable(f"backend {backend!r} is not part of this nsr-deploy build") from None
        raise


def backend_unavailable(backend: str) -> str | None:
    """None when ``backend`` can run here, else why not."""
    try:
        cls = runner_class(backend)
    except BackendUnavailable as e:
        return str(e)
    check = getattr(importlib.import_module(cls.__module__), "unavailable", None)
    return check() if check else None


def _file_and_manifest(path: Path):
    """A lone engine file's bytes (read once) and its contract: from the ``nsr.json`` beside it when that
    describes this file (then its hashes are checked), else the one embedded in the file itself."""
    from nsr_deploy.runtimes.manifest import MANIFEST, check_embedded, read_manifest

    if (path.parent / MANIFEST).exists():
        manifest = read_manifest(path.parent)
        for target, entry in manifest["targets"].items():  # the file the manifest describes must be the one recorded
            if entry.get("file") == path.name:
                files = verified_files(path.parent, entry, str(path.parent / MANIFEST))
                check_embedded(manifest, target, _by_name(entry, files), str(path.parent / MANIFEST))
                return files, manifest
    files = read_engine_files(path)
    if path.suffix == ".xml":  # a bare IR: its contract travels in the IR's rt_info
        from nsr_deploy.runtimes.openvino.runner import read_ir_manifest

        try:
            return files, read_ir_manifest(files)
        except RuntimeError as e:
            raise NSRError(f"{path}: OpenVINO cannot read it ({str(e).strip().splitlines()[0][:160]})") from None
    if path.suffix == ".onnx":  # a bare model: its contract travels in the ONNX metadata
        props = _onnx_metadata(files.engine, path)
        if "nsr_manifest" in props:
            return files, parse_json(props["nsr_manifest"], f"{path}: its nsr_manifest metadata")
    return files, None


def _by_name(entry: dict, files) -> dict[str, bytes]:
    """The verified bytes keyed by the names the manifest entry gives them."""
    out = {entry["file"]: files.engine}
    if entry.get("weights") is not None:
        out[entry["weights"]] = files.weights
    return out


# engine files that carry no manifest of their own: checked against the ONNX model they were lowered from
NO_EMBEDDED_MANIFEST = (".param", ".pte", ".engine")


def _embedded_sources(folder: Path, manifest: dict, target: str, files) -> dict[str, bytes]:
    """The verified bytes ``check_embedded`` reads the hashed contract from: the engine's own files, plus
    the folder's ``model.onnx`` (verified too) for an engine that carries no manifest (ncnn, ExecuTorch,
    TensorRT), so that an edited ``nsr.json`` cannot change what those engines are fed."""
    entry = manifest["targets"][target]
    sources = _by_name(entry, files)
    onnx_entry = manifest["targets"].get("onnx")
    if Path(entry["file"]).suffix in NO_EMBEDDED_MANIFEST and onnx_entry and target != "onnx":
        sources[onnx_entry["file"]] = verified_files(folder, onnx_entry, str(folder / "nsr.json")).engine
    return sources


def _onnx_metadata(data: bytes, path: Path) -> dict:
    """An ONNX model's metadata props, read from its bytes by ``onnx`` or, without it, by ONNX Runtime."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load_from_string(data)
        except Exception as e:  # noqa: BLE001 - protobuf's decode errors have no common base worth naming
            raise NSRError(f"{path}: not a readable ONNX model ({str(e).strip()[:160] or type(e).__name__})") \
                from None
        return {p.key: p.value for p in model.metadata_props}
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - not loadable here: no contract to read
        return {}
    return dict(session.get_modelmeta().custom_metadata_map)


def _folder_runner(folder: Path, manifest: dict, backend: str, threads: int | None, tile_batch: int | None):
    """A (lazy) runner for the folder's engine of ``backend``: its files read once and hash-checked, the
    contract they embed checked against nsr.json."""
    from nsr_deploy.runtimes.manifest import MANIFEST, check_embedded

    target = TARGET_OF_BACKEND[backend]
    entry = manifest["targets"][target]
    files = verified_files(folder, entry, str(folder / MANIFEST))  # read once, hashed: what runs
    check_embedded(manifest, target, _embedded_sources(folder, manifest, target, files), str(folder / MANIFEST))
    kwargs = {"files": files}
    if backend == "openvino" and entry.get("static_batch") is None and tile_batch:
        kwargs["tile_batch"] = tile_batch  # dynamic engines are reshaped to the tile batch at load
    return runner_class(backend)(str(files.path), threads, **kwargs)


def load(path, backend: str = "auto", threads: int | None = None, tiling: str = "reference",
         tile_batch: int | None = None, image_mean: float | None = None, patch_size: int | None = None):
    """An :class:`~nsr_deploy.runtimes.engine.Engine` for an export folder, engine file or checkpoint.

    Activation is lazy: the backend loads on first use or on ``activate()`` / ``with``; except that ``auto`` on a
    folder with several engines that run here opens them to time them once (:mod:`.auto_choice`), and the
    chosen one stays open.
    """
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.manifest import MANIFEST, manifest_config, read_manifest

    check_threads(threads, "threads")  # thousands of runtime threads deadlock: refused as the CLI refuses them
    p = Path(str(path))
    if p.is_dir():
        manifest = read_manifest(p)
        targets = manifest.get("targets", {})
        config = manifest_config(manifest, str(p / MANIFEST))
        if backend == "auto":
            from nsr_deploy.runtimes.auto_choice import choose
            from nsr_deploy.runtimes.engine import DEFAULT_TILE_BATCH, TILINGS

            if tiling not in TILINGS:  # refused before any engine is opened to be timed
                raise NSRError(f"unknown tiling {tiling!r} (choose from {', '.join(TILINGS)})")

            def open_runner(name: str):
                return _folder_runner(p, manifest, name, threads, tile_batch)

            choice, runner = choose(targets, open_runner, backend_unavailable, threads,
                                    tile_batch or DEFAULT_TILE_BATCH, config.patch_size, config.channels, str(p))
            runner = runner or open_runner(choice.backend)
            runner.auto_choice = choice.as_dict()
            return Engine(runner, config, tiling, tile_batch, manifest)
        if backend == REFERENCE_BACKEND:
            raise NSRError("the torch backend runs checkpoints, not export folders")
        target = TARGET_OF_BACKEND[backend]
        if target not in targets:
            raise NSRError(f"{p}: holds no {target} engine (it has: {', '.join(targets)})")
        runner = _folder_runner(p, manifest, backend, threads, tile_batch)
        return Engine(runner, config, tiling, tile_batch, manifest)
    if p.suffix in BACKEND_OF_SUFFIX:
        if not p.exists():
            raise NSRError(f"{p}: no such file")
        want = BACKEND_OF_SUFFIX[p.suffix]
        if backend not in ("auto", want):
            raise NSRError(f"{p.name} is a {want} engine; backend {backend!r} cannot run it")
        files, manifest = _file_and_manifest(p)
        if manifest is None:
            raise NSRError(f"{p}: no nsr.json beside it, so its I/O contract is unknown")
        runner = runner_class(want)(str(p), threads, files=files)
        return Engine(runner, manifest_config(manifest, str(p)), tiling, tile_batch, manifest)
    # anything else: a checkpoint or bundled model, run by the PyTorch reference
    from nsr_deploy.assets import bundled_names

    if not p.exists() and str(path) not in bundled_names():
        raise NSRError(f"{p}: no such export folder, engine file, checkpoint or bundled model "
                       f"({', '.join(bundled_names())})")
    if backend not in ("auto", REFERENCE_BACKEND):
        raise NSRError(f"{p}: a checkpoint runs on the torch backend only (export it for {backend})")
    cls = runner_class(REFERENCE_BACKEND)
    runner = cls(str(path), threads, image_mean=image_mean, patch_size=patch_size)
    return Engine(runner, runner.config, tiling, tile_batch, {})


__all__ = ["BACKENDS", "load", "backend_unavailable"]
