"""The layout rule of docs DESIGN section 1: the shared rooms (``models/``, ``data/``, ``geometry.py``,
``validation.py``) never import a method package, at module level or inside a function; a method's models and
weights tags reach the registry from its own package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "art_patch_defenses"
METHODS = ("fnc", "patchzero", "robust_masking", "mrs", "scalecert", "patchcleanser")
SHARED_ROOMS = ("models", "data", "geometry.py", "validation.py")


def shared_modules() -> list[Path]:
    files: list[Path] = []
    for room in SHARED_ROOMS:
        path = PACKAGE / room
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) may import, wherever the import sits: ``import``,
    ``from ... import`` (relative ones resolved; each imported name also counted as a possible submodule)
    and ``importlib.import_module`` / ``__import__`` with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def method_imports(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f"art_patch_defenses.{x}" or m.startswith(f"art_patch_defenses.{x}.")
                                            for x in METHODS))


def test_the_import_scan_sees_every_kind_of_import():
    """The rule below is only as good as the scan: it must see imports in functions, relative ones, ``from
    art_patch_defenses import <method>`` and ``importlib.import_module``."""
    source = (
        "import torch\n"
        "def f():\n    from art_patch_defenses.scalecert.training import train_scalecert\n"
        "def g():\n    from ..robust_masking import backbones\n"
        "from art_patch_defenses import mrs\n"
        "import importlib\nimportlib.import_module('art_patch_defenses.patchzero')\n"
        "class C:\n    def h(self):\n        import art_patch_defenses.fnc.clipping\n"
        "from . import checkpoints\n"
    )
    found = method_imports(imported_modules(source, "art_patch_defenses.models.example"))
    assert found == ["art_patch_defenses.fnc.clipping", "art_patch_defenses.mrs", "art_patch_defenses.patchzero",
                     "art_patch_defenses.robust_masking", "art_patch_defenses.robust_masking.backbones",
                     "art_patch_defenses.scalecert.training", "art_patch_defenses.scalecert.training.train_scalecert"]
    assert method_imports(imported_modules("from . import registry\n", "art_patch_defenses.models.x")) == []


def test_the_shared_rooms_exist():
    files = shared_modules()
    names = {_module_name(path) for path in files}
    assert {"art_patch_defenses.models.registry", "art_patch_defenses.data.datasets", "art_patch_defenses.geometry",
            "art_patch_defenses.validation"} <= names


@pytest.mark.parametrize("path", shared_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_shared_rooms_import_no_method_package(path):
    found = imported_modules(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")
    assert method_imports(found) == [], f"{path.relative_to(PACKAGE)} imports a method package"


def test_a_fresh_interpreter_gets_method_tags_only_from_the_method_package():
    """Importing the shared rooms loads no method; a method's tag is unknown (with a message that says which
    import registers it) until its package is imported, and works after."""
    script = f"""
import sys
import art_patch_defenses.data, art_patch_defenses.geometry, art_patch_defenses.models, art_patch_defenses.validation
import art_patch_defenses.models.train_embedded
from art_patch_defenses.models import build_model
loaded = [m for m in sys.modules if m.split('.')[:2] in [['art_patch_defenses', x] for x in {METHODS!r}]]
assert not loaded, loaded
try:
    build_model('mnist_cnn', 'scalecert')
except ValueError as error:
    assert 'import art_patch_defenses.scalecert' in str(error), error
else:
    raise AssertionError('the scalecert tag resolved before the package was imported')
import art_patch_defenses.scalecert
build_model('mnist_cnn', 'scalecert')
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def package_import_graph() -> dict[str, set[str]]:
    """Module -> the package's own modules it imports (module level or in a function), over every module."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = imported_modules(path.read_text(), name, is_package=path.name == "__init__.py")
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle among modules that import each other (Tarjan's strongly connected components, size > 1).
    A package's ``__init__`` importing its own submodules is not a cycle unless a submodule imports it back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    """No two modules import each other, directly or round a loop, whether the import sits at module level or
    inside a function (the package's lazy top-level ``__init__`` imports nothing at import time and is left out)."""
    graph = package_import_graph()
    graph.pop("art_patch_defenses", None)
    for targets in graph.values():
        targets.discard("art_patch_defenses")
    assert import_cycles(graph) == []


def test_verify_speaks_to_the_protocol_not_to_certifier_names():
    """evaluation/verify.py names no certifier class or package and switches on no certifier name (its one
    branch is on the protocol's certificate kind: the threat model a region-L2 certificate covers)."""
    import re

    source = (PACKAGE / "evaluation" / "verify.py").read_text()
    assert not re.search(r"kind\s*==\s*[\"']", source)
    found = imported_modules(source, "art_patch_defenses.evaluation.verify")
    assert method_imports(found) == [] and not any("baselines" in m for m in found)
    for name in ("PyTorchRobustMasking", "PyTorchScaleCert", "PyTorchMRS", "PyTorchPatchCleanser",
                 "DeRandomizedSmoothing", "robust_masking", "scalecert", "patchcleanser"):
        assert name not in source, name
