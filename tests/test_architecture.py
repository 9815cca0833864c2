"""The package's layering, read from the source (every import, those inside functions included):

    cli, bench  ->  exporters  ->  checks  ->  models, runtimes, capabilities

nothing below reaches up, ``runtimes`` (torch-free, shipped alone) never imports an exporter, and the
conv-form and backend vocabulary is typed in one place, :mod:`nsr_deploy.capabilities`.
"""

import ast
from pathlib import Path

import pytest

from nsr_deploy import capabilities

PACKAGE = Path(capabilities.__file__).resolve().parent
FORM_WORDS = set(capabilities.FORM_CHOICES)
BACKEND_WORDS = {*capabilities.BACKEND_NAMES, capabilities.AUTO_BACKEND}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an import statement anywhere in ``tree`` names (relative imports resolved;
    ``from a import b`` counts as ``a`` and as ``a.b``, since ``b`` may be a module)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names.add(parent)
            names.update(f"{parent}.{alias.name}" for alias in node.names)
    return names


def vocabulary_literals(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """Tuples, lists and sets of two or more strings that are all conv-form names or all backend names."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or len(node.elts) < 2:
            continue
        if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            continue
        words = {e.value for e in node.elts}
        if words - {"auto"} and (words <= FORM_WORDS or words <= BACKEND_WORDS):
            found.append((node.lineno, sorted(words)))
    return found


def sources() -> dict[str, tuple[Path, ast.AST]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


SOURCES = sources()
IMPORTS = {m: imported(tree, m, p.name == "__init__.py") for m, (p, tree) in SOURCES.items()}


def reaching(layer: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules under ``nsr_deploy.<layer>`` importing anything under one of ``forbidden``."""
    bad = {}
    for module, names in IMPORTS.items():
        if module == f"nsr_deploy.{layer}" or module.startswith(f"nsr_deploy.{layer}."):
            hits = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
            if hits:
                bad[module] = hits
    return bad


def test_the_walker_sees_imports_inside_functions_and_relative_ones():
    tree = ast.parse("def f():\n    from nsr_deploy.bench import parity\n\nfrom . import common\n")
    names = imported(tree, "nsr_deploy.exporters.onnx", is_package=False)
    assert {"nsr_deploy.bench", "nsr_deploy.bench.parity", "nsr_deploy.exporters.common"} <= names
    assert "nsr_deploy.capabilities" in IMPORTS["nsr_deploy.exporters.onnx"]  # a real module, seen


@pytest.mark.parametrize("layer", ["models", "runtimes", "checks", "exporters"])
def test_lower_layers_never_import_the_bench_or_the_cli(layer):
    assert reaching(layer, ("nsr_deploy.bench", "nsr_deploy.cli")) == {}


def test_runtimes_never_import_exporters():
    assert reaching("runtimes", ("nsr_deploy.exporters",)) == {}


def test_checks_import_neither_exporters_nor_bench():
    assert reaching("checks", ("nsr_deploy.exporters", "nsr_deploy.bench")) == {}


def test_the_detector_flags_a_typed_vocabulary_list():
    tree = ast.parse('FORMS = ("grouped", "matmul")\nB = ["auto", "torch", "openvino"]\nOK = ("x", "matmul")\n')
    assert [line for line, _ in vocabulary_literals(tree)] == [1, 2]


def test_conv_forms_and_backends_are_typed_only_in_the_capability_table():
    typed = {m: found for m, (_, tree) in SOURCES.items() if m != "nsr_deploy.capabilities"
             for found in [vocabulary_literals(tree)] if found}
    assert typed == {}
