"""A demo corpus of real text every Python has: the standard library's sources and docstrings."""

from __future__ import annotations

import ast
import gzip
import json
import sysconfig
from pathlib import Path
from typing import Any

SKIPPED_FOLDERS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


def stdlib_modules() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path
        for path in root.rglob("*.py")
        if not SKIPPED_FOLDERS.intersection(path.relative_to(root).parts[:-1])
    )


def _records(path: Path, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        docstring = ast.get_docstring(ast.parse(source)) or ""
    except SyntaxError:
        docstring = ""
    package = module.split(".")[0]
    source_record = {"text": source, "kind": "source", "module": module, "package": package}
    doc_record = {"text": docstring, "kind": "docstring", "module": module, "package": package}
    return source_record, doc_record


def write_demo_corpus(folder: Path) -> list[Path]:
    """Write the stdlib's module sources and module docstrings as three gzip JSON Lines shards.

    Modules without a docstring give an empty text on purpose: the run quarantines them.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    folder.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[dict[str, Any]]] = {
        "docstrings": [],
        "sources-a-m": [],
        "sources-n-z": [],
    }
    for path in stdlib_modules():
        source_record, doc_record = _records(path, root)
        half = "sources-a-m" if source_record["module"][:1].lower() <= "m" else "sources-n-z"
        shards[half].append(source_record)
        shards["docstrings"].append(doc_record)
    written = []
    for name, records in shards.items():
        target = folder / f"{name}.jsonl.gz"
        with gzip.open(target, "wt", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        written.append(target)
    return written


def demo_config(output: Path) -> dict[str, Any]:
    return {
        "input": {
            "paths": [str(output / "demo-corpus")],
            "group_field": "kind",
            "max_chars": 100_000,
        },
        "output": {"path": str(output)},
        "select": {"method": "random", "budget": {"docs": 300}},
        "stages": {"stats": {}},
        "seed": 0,
    }
