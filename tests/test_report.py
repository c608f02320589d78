from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

from distsel import pipeline
from distsel.config import parse_config
from distsel.report import write_report


@pytest.mark.slow
def test_report_is_self_contained_html_with_plots(ray_local, tmp_path):
    texts = stdlib_paragraphs(40)
    records = [{"text": t, "kind": "even" if i % 2 else "odd"} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "corpus" / "c.jsonl", records)
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="random", budget={"docs": 10})
    raw["input"]["group_field"] = "kind"
    raw["stages"] = {"stats": {}, "embed": {"pool_size": 1}}
    pipeline.run(parse_config(raw))

    path = write_report(str(tmp_path / "out"))
    page = Path(path).read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert "share per kind" in captions
    assert "stats: n_chars" in captions and "embeddings (PCA)" in captions
    assert "tokens: n_tokens" in captions
    assert len(images) == len(captions) == 1 + 4 + 1 + 1
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "<th>selected_docs</th><td>10</td>" in page
    assert 'src="http' not in page, "nothing is loaded from elsewhere"
