"""Security defaults: credentials stay out of logs, manifests and reports; nothing a user hands
in is unpickled."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
import torch
from helpers import PACKAGE, base_config, stdlib_paragraphs, write_jsonl
from transformers import AutoTokenizer, BertConfig, BertModel

from distsel.methods.embed import Embedder, default_model_path

SECRET, KEY = "s3cr3t-hunter2-value", "AKIAFAKEKEY0000"


@pytest.mark.slow
def test_credentials_stay_out_of_logs_manifest_and_report(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in stdlib_paragraphs(30)])
    raw = base_config([corpus], tmp_path / "out", method="random", budget={"docs": 5})
    raw["input"]["storage_options"] = {"key": KEY, "secret": SECRET}
    raw["stages"] = {"stats": {}}
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(raw))
    command = [sys.executable, "-m", "distsel.app.cli", "-v"]
    logs = subprocess.run([*command, "run", str(config)], capture_output=True, text=True)
    assert logs.returncode == 0, logs.stderr[-2000:]
    report = subprocess.run([*command, "report", str(tmp_path / "out")], capture_output=True)
    assert report.returncode == 0
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "report.html" for p in written)
    for text in (logs.stdout, logs.stderr, *(p.read_bytes().decode("latin-1") for p in written)):
        assert SECRET not in text and KEY not in text


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            found.append((name, node))
    return found


def test_no_code_path_unpickles():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, call in _calls(tree):
            where = f"{path}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            assert name not in {"loads", "load"} or not _is_pickle_module(call), where
            if name == "load" and _module_name(call) in {"torch", "np", "numpy"}:
                flag = keywords.get(
                    "weights_only" if _module_name(call) == "torch" else "allow_pickle"
                )
                wanted = _module_name(call) == "torch"
                assert isinstance(flag, ast.Constant) and flag.value is wanted, where
            if name == "from_pretrained" and "Model" in ast.unparse(call.func):
                flag = keywords.get("use_safetensors")
                assert isinstance(flag, ast.Constant) and flag.value is True, where


def _module_name(call: ast.Call) -> str:
    func = call.func
    return (
        func.value.id
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        else ""
    )


def _is_pickle_module(call: ast.Call) -> bool:
    return _module_name(call) in {"pickle", "cloudpickle", "joblib", "dill"}


def test_a_pickled_model_checkpoint_is_refused(tmp_path):
    """A model folder that holds only a pickled checkpoint (pytorch_model.bin) is not loaded."""
    folder = tmp_path / "model"
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(folder)
    shape = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    model = BertModel(BertConfig(vocab_size=30522, intermediate_size=16, **shape))
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    with pytest.raises(OSError, match="safetensors"):
        Embedder(folder, device="cpu")
