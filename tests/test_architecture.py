"""The package's layering and its import graph, read from the source (every import, those inside functions
included, relative ones resolved):

    cli, bench  ->  exporters  ->  checks  ->  models, runtimes  ->  core

Nothing below reaches up; ``core`` imports nothing else of nsr-deploy; ``runtimes`` (torch-free, shipped alone)
never imports an exporter, a check or a model, except the PyTorch reference backend (``runtimes.torch``), whose
job is to run the model; ``models`` never imports a runtime. No two modules import each other, directly or
through others (a cycle), and the conv-form and backend vocabulary is typed in one place,
:mod:`nsr_deploy.core.capabilities`.
"""

import ast
from pathlib import Path

import pytest

import nsr_deploy
from nsr_deploy.core import capabilities

PACKAGE = Path(nsr_deploy.__file__).resolve().parent
FORM_WORDS = set(capabilities.FORM_CHOICES)
BACKEND_WORDS = {*capabilities.BACKEND_NAMES, capabilities.AUTO_BACKEND}
# each layer and the layers it may import (its own included)
ALLOWED = {
    "core": {"core"},
    "assets": {"core", "assets"},  # the bundled models and photos: data every layer above core may read
    "models": {"core", "assets", "models"},
    "runtimes": {"core", "assets", "runtimes"},
    "checks": {"core", "assets", "models", "runtimes", "checks"},
    "exporters": {"core", "assets", "models", "runtimes", "checks", "exporters"},
    "bench": {"core", "models", "runtimes", "checks", "exporters", "bench", "assets"},
    "cli": {"core", "models", "runtimes", "checks", "exporters", "bench", "cli", "assets"},
}
# the reference backend runs the torch model: the one runtime allowed to import models
EXCEPTIONS = {"nsr_deploy.runtimes.torch": {"models"}}


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


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "nsr_deploy" else ""


def edges() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name that is an attribute, not a module, is dropped)."""
    return {m: {n for n in names if n in SOURCES and n != m} for m, names in IMPORTS.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_sees_imports_inside_functions_and_relative_ones():
    tree = ast.parse("def f():\n    from nsr_deploy.bench import parity\n\nfrom . import common\n")
    names = imported(tree, "nsr_deploy.exporters.pipeline", is_package=False)
    assert {"nsr_deploy.bench", "nsr_deploy.bench.parity", "nsr_deploy.exporters.common"} <= names
    assert "nsr_deploy.core.capabilities" in IMPORTS["nsr_deploy.exporters.onnx.target"]  # a real module, seen


def test_the_cycle_finder_finds_a_cycle_through_three_modules_and_ignores_a_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(edges()) == []


def violations() -> dict[str, list[str]]:
    bad = {}
    for module, targets in edges().items():
        allowed = set(ALLOWED.get(layer_of(module), set()))
        for prefix, extra in EXCEPTIONS.items():
            if module == prefix or module.startswith(prefix + "."):
                allowed |= extra
        hits = sorted(n for n in targets if layer_of(n) and layer_of(n) not in allowed)
        if hits:
            bad[module] = hits
    return bad


def test_every_module_belongs_to_a_layer():
    layers = {layer_of(m) for m in SOURCES} - {""}
    assert layers <= set(ALLOWED)


def test_no_layer_reaches_up_or_sideways():
    assert violations() == {}


@pytest.mark.parametrize("layer", ["models", "runtimes", "checks", "exporters"])
def test_lower_layers_never_import_the_bench_or_the_cli(layer):
    assert reaching(layer, ("nsr_deploy.bench", "nsr_deploy.cli")) == {}


def test_runtimes_never_import_exporters():
    assert reaching("runtimes", ("nsr_deploy.exporters",)) == {}


def test_models_and_runtimes_meet_only_in_core():
    assert reaching("models", ("nsr_deploy.runtimes",)) == {}
    outside_reference = {m: hits for m, hits in reaching("runtimes", ("nsr_deploy.models",)).items()
                         if not m.startswith("nsr_deploy.runtimes.torch")}
    assert outside_reference == {}


def test_core_imports_nothing_above_it():
    assert reaching("core", tuple(f"nsr_deploy.{layer}" for layer in ALLOWED if layer != "core")) == {}


def test_each_target_and_backend_has_its_own_package():
    for target in capabilities.ALL_TARGETS:
        assert (PACKAGE / "exporters" / target / "target.py").is_file(), target
        # the protocol of exporters/target.py, said in that one file: its name, availability, build and gate
        _, tree = SOURCES[f"nsr_deploy.exporters.{target}.target"]
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        names = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)}
        assert {"unavailable", "build", "gate"} <= defined, target
        assert isinstance(names.get("NAME"), ast.Constant) and names["NAME"].value == target, target
    for backend in capabilities.BACKEND_TABLE:
        assert backend.runner_module == f"nsr_deploy.runtimes.{backend.name}.runner", backend.name
        assert (PACKAGE / "runtimes" / backend.name / "runner.py").is_file(), backend.name


def test_the_detector_flags_a_typed_vocabulary_list():
    tree = ast.parse('FORMS = ("grouped", "matmul")\nB = ["auto", "torch", "openvino"]\nOK = ("x", "matmul")\n')
    assert [line for line, _ in vocabulary_literals(tree)] == [1, 2]


def test_conv_forms_and_backends_are_typed_only_in_the_capability_table():
    typed = {m: found for m, (_, tree) in SOURCES.items() if m != "nsr_deploy.core.capabilities"
             for found in [vocabulary_literals(tree)] if found}
    assert typed == {}
