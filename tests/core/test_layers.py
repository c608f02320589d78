"""The four layers: core, algorithms, methods, app. A module imports only from its own layer or
a lower one (algorithms: from core.errors alone), function-level imports included, and no two
top-level packages (the layers and the package's __init__) import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "distsel"
RANK = {"core": 0, "algorithms": 1, "methods": 2, "app": 3}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every distsel import in `path`, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "distsel":
                found += [(node.lineno, f"distsel.{alias.name}") for alias in node.names]
            elif node.module.startswith("distsel."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("distsel")]
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def package(module: str) -> str:
    """The top-level package (its layer) a module belongs to; `distsel` for the package's own
    __init__."""
    return ".".join(module.split(".")[:2])


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def up_imports(path: Path, package: Path = PACKAGE) -> list[str]:
    own = layer(module_name(path, package))
    if own is None:
        return []
    wrong = []
    for line, target in imported(path):
        other = layer(target)
        if own == "algorithms":
            allowed = target == "distsel.core.errors" or other == "algorithms"
        else:
            allowed = other is not None and RANK[other] <= RANK[own]
        if not allowed:
            wrong.append(f"{path.relative_to(package.parent)}:{line} imports {target}")
    return wrong


def test_every_module_is_in_a_layer() -> None:
    loose = [module_name(p) for p in modules() if layer(module_name(p)) is None]
    assert loose == ["distsel"], "only the package's __init__ sits above the layers"


def test_imports_go_only_downward() -> None:
    wrong = [line for path in modules() for line in up_imports(path)]
    assert not wrong, "\n".join(wrong)


def test_no_two_packages_import_each_other() -> None:
    edges = {
        (package(module_name(path)), package(target))
        for path in modules()
        for _, target in imported(path)
        if target != "distsel"
    }
    pairs = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)
    assert not pairs, pairs


def test_the_check_sees_upward_imports(tmp_path: Path) -> None:
    """A core module importing a method inside a function, and an algorithm importing the
    config, are flagged; a method importing core and an algorithm importing core.errors are not."""
    package = tmp_path / "distsel"
    sources = {
        "core/pool.py": "def f():\n    from distsel.methods.dsir import DsirStage\n",
        "algorithms/bandit.py": "from distsel.core.config import Config\n",
        "algorithms/kmeans.py": "from distsel.core.errors import DistselError\n",
        "methods/dsir.py": "from distsel.core import layout\nfrom distsel.algorithms import dsir\n",
    }
    for name, text in sources.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    flagged = {name: up_imports(package / name, package) for name in sources}
    assert flagged["core/pool.py"] == ["distsel/core/pool.py:2 imports distsel.methods.dsir"]
    assert flagged["algorithms/bandit.py"] == [
        "distsel/algorithms/bandit.py:1 imports distsel.core.config"
    ]
    assert flagged["algorithms/kmeans.py"] == flagged["methods/dsir.py"] == []
