"""Cheap text statistics, a stage any selector can rank or filter on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distsel.core.registry import register_stage
from distsel.core.stage import Resources, Stage


@register_stage
class TextStatsStage(Stage):
    """Cheap text statistics: characters, words, mean word length, share of alphabetic chars."""

    name = "stats"
    input_columns = ("text",)
    output_columns = ("n_chars", "n_words", "mean_word_length", "alpha_fraction")
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray | pa.Array]:
        text = batch.column("text")
        chars = pc.utf8_length(text)
        words = pc.list_value_length(pc.utf8_split_whitespace(text))
        alpha = pc.utf8_length(pc.replace_substring_regex(text, r"[^\p{L}]", ""))
        letters = pc.utf8_length(pc.replace_substring_regex(text, r"\s", ""))
        chars_np = chars.to_numpy().astype(np.float64)
        words_np = words.to_numpy().astype(np.float64)
        return {
            "n_chars": chars,
            "n_words": words,
            "mean_word_length": letters.to_numpy() / np.maximum(words_np, 1),
            "alpha_fraction": alpha.to_numpy() / np.maximum(chars_np, 1),
        }
