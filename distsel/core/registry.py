"""Methods register themselves where they are written: a scoring stage with `@register_stage`, a
selector with `@register_selector("name", options=..., needs_target=...)`. Nothing else lists
them. The registry finds the modules that register by reading distsel's sources (no import, so
the torch-heavy ones load only when a run uses them) and imports a module when one of its names
is first asked for. A new method is one new module under distsel/methods/, or a module of your own
named in DISTSEL_PLUGINS (comma-separated module names, imported when the registry is first
read; on a cluster they must be importable on every node).
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from distsel.core.errors import DistselError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from distsel.core.stage import Stage

PACKAGE = Path(__file__).resolve().parent.parent
METHODS = PACKAGE / "methods"  # where the built-in methods register
T = TypeVar("T")


@dataclass(frozen=True)
class Declared:
    """A registration as written in a module's source."""

    module: str
    needs_target: bool = False
    needs_budget: bool = True


_stages: dict[str, type[Stage]] = {}
_selectors: dict[str, Any] = {}
_options: dict[str, type[BaseModel] | None] = {}
_needs_target: dict[str, bool] = {}
_needs_budget: dict[str, bool] = {}


def register_stage(cls: type[T]) -> type[T]:
    """Class decorator: the stage is known by its `name`."""
    _stages[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def register_selector(
    method: str,
    *,
    options: type[BaseModel] | None = None,
    needs_target: bool = False,
    needs_budget: bool = True,
) -> Any:
    """Class decorator: `select.method: <method>` uses an instance of the class, and its options
    (validated by `options`) are `select.<method>`. `needs_target` makes target.paths required,
    `needs_budget` select.budget (literals in the source: the registry reads them without
    importing the module)."""

    def register(cls: type[T]) -> type[T]:
        _selectors[method] = cls()
        _options[method] = options
        _needs_target[method] = needs_target
        _needs_budget[method] = needs_budget
        return cls

    return register


@functools.cache
def declared() -> tuple[dict[str, Declared], dict[str, Declared]]:
    """(stages, selectors) by name, from the decorators in distsel.methods' modules."""
    stages: dict[str, Declared] = {}
    selectors: dict[str, Declared] = {}
    for path in sorted(METHODS.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "register_" not in source:
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                _read_class(node, module, stages, selectors)
    for module in filter(None, os.environ.get("DISTSEL_PLUGINS", "").split(",")):
        _add_plugin(module.strip(), stages, selectors)
    return stages, selectors


def _add_plugin(module: str, stages: dict[str, Declared], selectors: dict[str, Declared]) -> None:
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        raise DistselError(f"DISTSEL_PLUGINS: cannot import {module} ({exc})") from None
    for name, cls in _stages.items():
        if cls.__module__ == imported.__name__:
            stages[name] = Declared(module)
    for method, instance in _selectors.items():
        if type(instance).__module__ == imported.__name__:
            selectors[method] = Declared(module, _needs_target[method], _needs_budget[method])


def _read_class(
    node: ast.ClassDef,
    module: str,
    stages: dict[str, Declared],
    selectors: dict[str, Declared],
) -> None:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Name) and decorator.id == "register_stage":
            stages[_class_constant(node, "name")] = Declared(module)
        elif isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == (
            "register_selector"
        ):
            keywords = {k.arg: k.value for k in decorator.keywords}
            flags = {name: _literal_flag(keywords, name, default) for name, default in FLAGS}
            selectors[ast.literal_eval(decorator.args[0])] = Declared(module, **flags)


FLAGS = (("needs_target", False), ("needs_budget", True))


def _literal_flag(keywords: dict[str, ast.expr], name: str, default: bool) -> bool:
    value = keywords.get(name)
    return (
        value.value
        if isinstance(value, ast.Constant) and isinstance(value.value, bool)
        else default
    )


def _class_constant(node: ast.ClassDef, attribute: str) -> str:
    for statement in node.body:
        if isinstance(statement, ast.Assign) and any(
            getattr(t, "id", None) == attribute for t in statement.targets
        ):
            return ast.literal_eval(statement.value)
    raise DistselError(f"{node.name}: a registered stage needs a literal `{attribute} = ...`")


def stage_names() -> list[str]:
    return sorted(declared()[0])


def selector_names() -> list[str]:
    return sorted(declared()[1])


def needs_target(method: str) -> bool:
    entry = declared()[1].get(method)
    return entry is not None and entry.needs_target


def needs_budget(method: str) -> bool:
    entry = declared()[1].get(method)
    return entry is None or entry.needs_budget


def stage_class(name: str) -> type[Stage]:
    stages = declared()[0]
    if name not in stages:
        raise DistselError(f"stages.{name}: unknown stage (known: {', '.join(stage_names())})")
    importlib.import_module(stages[name].module)
    return _stages[name]


def selector(method: str) -> Any:
    selectors = declared()[1]
    if method not in selectors:
        known = ", ".join(selector_names())
        raise DistselError(f"select.method '{method}' is not available (known: {known})")
    importlib.import_module(selectors[method].module)
    return _selectors[method]


def selector_options(method: str) -> type[BaseModel] | None:
    """The options class of `select.<method>` (None: the method takes none)."""
    selector(method)
    return _options[method]


def stage_for_column(column: str) -> str:
    """The stage that writes score `column` (its declared outputs, or `<stage>_...`)."""
    for name in stage_names():
        if column == name or column.startswith(f"{name}_"):
            return name
    for name in stage_names():
        if column in stage_class(name).output_columns:
            return name
    raise DistselError(f"no stage writes a score column named '{column}'")
