"""The house plan of the design notes as a test: the plan drawn from the imports has no circle and no
arrow from a lower floor up, ``episodes`` never imports ``fewshot``, and no module imports another's private
(``_name``) names. Imports inside functions count: a late import is still an arrow.

A module's floor is the one :data:`FLOORS` gives its longest matching prefix (a folder's floor holds for its
modules unless one is named). The package's root holds only its public face and the ground floor; a new module
goes in the folder of its job (``docs/house.md``), and no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {  # 0 ground ... 7 the package's front door; a package's floor holds for its modules unless named here
    "episodes": 0,
    "fewshot.errors": 1, "fewshot.atomic": 1, "fewshot.safe_io": 1, "fewshot.runtime": 1, "fewshot.version": 1,
    "fewshot.json_io": 1, "fewshot.plots": 1, "fewshot.paths": 1, "fewshot.declared": 1,
    "fewshot.training.optim": 1, "fewshot.training.distributed": 1, "fewshot.training.loggers": 1,
    "fewshot.inference.inputs": 1, "fewshot.inference.graph_cache": 1, "fewshot.config.schema": 1,
    "fewshot.config": 2, "fewshot.heads": 2, "fewshot.backbones": 2,
    "fewshot.model.recipes": 2, "fewshot.model.transforms": 2, "fewshot.inference.examples": 2,
    "fewshot.model": 3,
    "fewshot.inference.calibration": 3, "fewshot.inference.open_set": 3, "fewshot.inference.export.onnx_graph": 3,
    "fewshot.evaluation": 4,
    "fewshot.inference.embedding": 4, "fewshot.inference.refine": 4, "fewshot.inference.adaptation": 4,
    "fewshot.inference": 5, "fewshot.training": 5,
    "fewshot.cli": 6, "fewshot.serve": 6,
    "fewshot": 7, "fewshot.__main__": 7,
}


def modules() -> dict[str, Path]:
    found = {}
    for package in ("fewshot", "episodes"):
        for file in (ROOT / package).rglob("*.py"):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = file
    return found


def imports(name: str, file: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, the names taken from it) for every import of ``file`` that names one of ``known``."""
    package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name in known]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found += [(module, []) for module in submodules]
            if target in known and len(submodules) < len(names):
                found.append((target, [n for n in names if f"{target}.{n}" not in known]))
    return [(module, names) for module, names in found if module != name]


def floor(name: str) -> int | None:
    parts = name.split(".")
    return next((FLOORS[".".join(parts[:k])] for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in FLOORS),
                None)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {module for module, _ in imports(name, file, known)} for name, file in known.items()}


ROOT_MODULES = {"__init__", "__main__", "errors", "atomic", "safe_io", "paths", "json_io", "runtime", "declared",
                "version", "plots"}
MAX_MODULE_LINES = 400


def test_the_package_root_holds_its_face_and_the_ground_floor():
    found = {file.stem for file in (ROOT / "fewshot").glob("*.py")}
    assert found == ROOT_MODULES, "a new module belongs in the folder of its job (docs/house.md)"
    assert {floor(f"fewshot.{name}") for name in ROOT_MODULES - {"__init__", "__main__"}} == {1}


def test_no_module_is_longer_than_400_lines():
    lengths = {name: len(file.read_text().splitlines()) for name, file in modules().items()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_every_module_has_a_floor():
    assert [name for name in modules() if floor(name) is None] == []


def test_no_import_goes_up_a_floor_and_episodes_stands_alone():
    upward = [f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
              for a, targets in graph().items() for b in targets if floor(b) > floor(a)]
    assert upward == []
    assert not [a for a, targets in graph().items() if a.startswith("episodes") and
                any(b.startswith("fewshot") for b in targets)]


def test_no_import_circle():
    edges, circles = graph(), []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        on_path.add(node)
        path.append(node)
        for target in sorted(edges[node]):
            if target in on_path:
                circles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, path, on_path, done)
        path.pop()
        on_path.discard(node)
        done.add(node)

    done: set[str] = set()
    for node in sorted(edges):
        if node not in done:
            visit(node, [], set(), done)
    assert circles == []


def test_no_private_name_crosses_a_module():
    known = modules()
    crossing = [f"{name} takes {module}.{n}" for name, file in known.items()
                for module, names in imports(name, file, known) for n in names
                if n.startswith("_") and not n.startswith("__")]  # dunders (__version__) are public
    assert crossing == []


def test_every_function_fits_on_a_screen():
    """At most 60 lines a function (house.md); pure declaration tables are module constants, not functions."""
    long = []
    for name, file in modules().items():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_the_pages_modules_import_each_other_in_no_circle():
    """The page's ES modules (``fewshot/serve/static/js``) form no import circle either (house.md)."""
    import re

    folder = ROOT / "fewshot" / "serve" / "static" / "js"
    graph = {file.name: set(re.findall(r'from "\./([\w-]+\.js)"', file.read_text())) for file in folder.glob("*.js")}
    assert graph and all(target in graph for targets in graph.values() for target in targets)
    circles = []

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif len(path) < len(graph):
                visit(target, path + [target])

    for start in sorted(graph):
        visit(start, [start])
    assert not circles, sorted(set(circles))[:5]
