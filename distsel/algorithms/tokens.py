"""Small pure tokenization helpers: a document's first ids from a prefix of its text, and whether
documents are texts or rows of ids (the tokenize stages' columns live in distsel.methods.tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# `document_ids` cuts texts to this many characters per kept token before tokenizing (a long
# document would otherwise be tokenized in full only to keep its first tokens).
DOCUMENT_CHARS_PER_TOKEN = 16


def document_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Each text's first `max_tokens` ids, not truncated by the tokenizer (so its end token, if
    any, only where the text ends first), tokenized from a prefix of DOCUMENT_CHARS_PER_TOKEN
    characters per kept token."""
    cut = max_tokens * DOCUMENT_CHARS_PER_TOKEN
    encoded = tokenizer([text[:cut] for text in checked_texts(texts)])["input_ids"]
    return [list(ids[:max_tokens]) for ids in encoded]


def are_texts(documents: Sequence[Any]) -> bool:
    """Whether documents are texts rather than rows of ids."""
    return bool(documents) and isinstance(documents[0], str)


def checked_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, raising TypeError on the first that is not a str."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
    return texts
