"""Read what a module declares (a registry's names, a registered class's capability) without importing it, so that
``fewshot --help``, ``fewshot recipes`` and argument errors never load torch.

A registry is a module-level dict literal (``HEADS = {"protonet": ProtoNet, ...}``) or tuple literal
(``RUNTIMES = ("auto", ...)``); a capability is a literal assigned in a class body (``transductive = True``),
inherited from a base class defined in the same module or imported relatively. When the module is already
imported, its live objects answer instead (so ``register_head`` additions are seen); a declaration that is not a
literal falls back to importing. ``tests/test_declared.py`` checks every registry and capability read here against
the imported objects.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any


class NotLiteral(Exception):
    """The declaration is not a literal: import the module to read it."""


@lru_cache(maxsize=None)
def module_tree(module: str) -> tuple[ast.Module, bool]:
    """The parsed source of ``module`` and whether it is a package, found from its top package's folder (finding a
    submodule's spec would import its parent package)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
        raise NotLiteral(module)
    path = Path(spec.origin).parent.joinpath(*rest)
    is_package = (path / "__init__.py").is_file()
    file = path / "__init__.py" if is_package else path.with_suffix(".py")
    if not file.is_file():
        raise NotLiteral(module)
    return ast.parse(file.read_text(encoding="utf-8")), is_package


def assigned(body: list[ast.stmt], name: str) -> ast.expr | None:
    """The value last assigned to ``name`` in ``body`` (``name = ...`` or ``name: T = ...``)."""
    found = None
    for statement in body:
        if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                     for t in statement.targets):
            found = statement.value
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                and statement.target.id == name and statement.value is not None:
            found = statement.value
    return found


def registry_entries(module: str, registry: str) -> dict[str, ast.expr | None]:
    """Keys of the dict literal (or items of the tuple literal) ``registry`` in ``module``, with their value nodes."""
    value = assigned(module_tree(module)[0].body, registry)
    if isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) for k in value.keys):
        return {k.value: v for k, v in zip(value.keys, value.values)}
    if isinstance(value, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in value.elts):
        return {e.value: None for e in value.elts}
    raise NotLiteral(f"{module}.{registry}")


def names(module: str, registry: str) -> list[str]:
    """The names registered in ``module.registry``, without importing ``module`` unless it already is."""
    if module in sys.modules:
        return list(getattr(sys.modules[module], registry))
    try:
        return list(registry_entries(module, registry))
    except (NotLiteral, OSError, SyntaxError):
        return list(getattr(importlib.import_module(module), registry))


def constant(module: str, name: str) -> Any:
    """The literal module-level constant ``module.name``, without importing ``module`` unless it already is."""
    if module not in sys.modules:
        try:
            value = assigned(module_tree(module)[0].body, name)
            if value is not None:
                return ast.literal_eval(value)
        except (NotLiteral, OSError, SyntaxError, ValueError):
            pass
    return getattr(importlib.import_module(module), name)


def capability(module: str, registry: str, name: str, attribute: str) -> Any:
    """``getattr(module.registry[name], attribute)``, read from the sources when ``module`` is not imported."""
    if module not in sys.modules:
        try:
            node = registry_entries(module, registry).get(name)
            if isinstance(node, ast.Name):
                return class_attribute(module, node.id, attribute)
        except (NotLiteral, OSError, SyntaxError, KeyError):
            pass
    return getattr(getattr(importlib.import_module(module), registry)[name], attribute)


def class_attribute(module: str, class_name: str, attribute: str) -> Any:
    """The literal ``attribute`` of class ``class_name`` as seen from ``module`` (defined there or imported into it
    relatively), following its base classes; raises :class:`NotLiteral` when it cannot be read from the source."""
    tree, is_package = module_tree(module)
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef) and statement.name == class_name:
            value = assigned(statement.body, attribute)
            if value is not None:
                try:
                    return ast.literal_eval(value)
                except ValueError:
                    raise NotLiteral(f"{module}.{class_name}.{attribute}") from None
            for base in statement.bases:
                if isinstance(base, ast.Name):
                    try:
                        return class_attribute(module, base.id, attribute)
                    except KeyError:
                        continue
            raise KeyError(attribute)
        if isinstance(statement, ast.ImportFrom) and statement.level and \
                any((alias.asname or alias.name) == class_name for alias in statement.names):
            original = next(alias.name for alias in statement.names if (alias.asname or alias.name) == class_name)
            return class_attribute(relative_module(module, is_package, statement), original, attribute)
    raise NotLiteral(f"{module}.{class_name}")


def relative_module(module: str, is_package: bool, statement: ast.ImportFrom) -> str:
    """The absolute name of the module a relative ``from ... import`` in ``module`` reads."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - statement.level + 1]
    return ".".join(parts + ([statement.module] if statement.module else []))
