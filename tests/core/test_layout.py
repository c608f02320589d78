"""distsel.core.layout spells the output folder; no other module of distsel spells a path in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from distsel.core import layout

PACKAGE = Path(layout.__file__).parents[1]
FOLDERS = (
    "docs",
    "scores",
    "_state",
    "selected",
    "clusters",
    "mixture",
    "rejected",
    "proxy",
    "_input",
)
# A folder of the output at the start of a string or after a separator: "docs/x", "-> scores/".
FOLDER_PATH = re.compile(rf"(?:^|[^\w.-])(?:{'|'.join(FOLDERS)})/")
FILES = re.compile(
    r"\b(?:manifest|scoring|search|stages|part_size|input|run|meta|fitted)\.json\b"
    r"|_fingerprint\.json|\.parquet\.json"
    r"|report\.html|fitted\.npz|centroids\.npy|centroid_distances\.npy|\.probe-"
)
HIDDEN = {"_state", "_input"}
STORE_CALLS = {"list", "sizes", "path", "exists", "remove", "read_table", "read_json"}


def _docstrings(tree: ast.AST) -> set[int]:
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def _spells_path(node: ast.AST, parent: ast.AST | None) -> bool:
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return False
    text = node.value
    if FOLDER_PATH.search(text) or FILES.search(text) or text in HIDDEN:
        return True
    called = isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute)
    return called and parent.func.attr in STORE_CALLS and text in FOLDERS


def path_spellings(source: str) -> list[int]:
    """Lines of `source` whose string literals (docstrings aside) spell an output path."""
    tree = ast.parse(source)
    skipped = _docstrings(tree)
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    return sorted(
        {
            node.lineno
            for node in ast.walk(tree)
            if id(node) not in skipped and _spells_path(node, parents.get(id(node)))
        }
    )


def test_only_layout_spells_output_paths() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sources
        if path != Path(layout.__file__)
        for line in path_spellings(path.read_text())
    ]
    assert not found, f"output paths spelled outside distsel/core/layout.py: {', '.join(found)}"


def test_scan_finds_spellings() -> None:
    source = '''
def f(store, part, stage):
    """Reads docs/<part> and writes manifest.json."""
    store.read_table(f"docs/{part}")
    store.exists("_state/input.json")
    store.list("scores")
    log.info("ingest: docs/%s is missing", part)
    write(f"{stage}/report.html")
    root = "_state"
    budget = {"docs": 10, "selected": 3}
'''
    assert path_spellings(source) == [4, 5, 6, 7, 8, 9]


def test_part_names() -> None:
    assert layout.part_name("a_b", "v1", 3) == "a_b-v1-00003.parquet"
    assert layout.part_name("a_b", "", 12) == "a_b-00012.parquet"


def test_paths() -> None:
    part = layout.part_name("s", "v", 0)
    assert layout.docs(part) == "docs/s-v-00000.parquet"
    assert layout.scores("embed") == "scores/embed"
    assert layout.scores("embed", part) == "scores/embed/s-v-00000.parquet"
    assert layout.marker("dsir", part) == "_state/dsir/s-v-00000.parquet.json"
    assert layout.fingerprint("dsir") == "_state/dsir/_fingerprint.json"
    assert layout.ingest_marker("s") == "_state/ingest/s.json"
    assert layout.duplicates("0123") == "_state/duplicates-0123.parquet"
    assert layout.ids(part) == "_state/ids/s-v-00000.parquet"
    assert layout.rejected("s") == "rejected/s.parquet"
    assert layout.selected("s-v-00000.jsonl") == "selected/s-v-00000.jsonl"
    assert layout.state("quad", "state.json") == layout.QUAD_STATE == "_state/quad/state.json"
    assert layout.RUN_RECORD == "_state/run.json"
    assert layout.mixture_trials("tune-1") == "mixture/trials/tune-1.json"


def test_listing_names() -> None:
    part = layout.part_name("s", "", 1)
    assert layout.marked_part(layout.marker_name(part)) == part
    assert layout.marked_part(layout.FINGERPRINT_NAME) is None
    assert layout.basename(layout.fingerprint("dsir")) == layout.FINGERPRINT_NAME
    assert layout.is_duplicates(layout.basename(layout.duplicates("0123")))
    assert not layout.is_duplicates(layout.basename(layout.PART_SIZE))
