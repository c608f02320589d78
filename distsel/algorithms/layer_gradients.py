"""Per-example gradients of chosen linear layers of a causal LM, from one forward and one backward
per batch of chunks: forward hooks keep each layer's inputs a_t, the backward gives its output
gradients b_t, and ∇_W L_i = Σ_t b_t a_tᵀ is formed only where asked (the formulas, and what the
influence scorer builds on them: distsel.algorithms.influence)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distsel.algorithms.tokens import are_texts, document_ids
from distsel.core.errors import DistselError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TIMERS = ("forward_backward", "projection", "rest")
# Texts, or their ids from the proxy_tokens stage (`tokens.document_ids`).
Documents = Sequence[str] | Sequence[Sequence[int]]


def find_linear_layers(model: nn.Module, suffixes: Sequence[str]) -> dict[str, nn.Linear]:
    """nn.Linear modules whose name ends with one of `suffixes`, in model order."""
    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] in suffixes
    }
    if not found:
        raise DistselError(f"influence: the model has no linear layers named {', '.join(suffixes)}")
    return found


def chunk_documents(
    tokenizer: Any, documents: Documents, max_length: int, max_chunks: int
) -> tuple[list[list[int]], np.ndarray]:
    """Chunks of ≤ max_length (and ≥ 2) tokens, ≤ max_chunks per document, and each one's
    document index. `documents`: texts, or their `document_ids` (the proxy_tokens stage's)."""
    if are_texts(documents):
        documents = document_ids(tokenizer, documents, max_length * max_chunks)
    chunks: list[list[int]] = []
    owners: list[int] = []
    for index, ids in enumerate(documents):
        for start in range(0, len(ids), max_length)[:max_chunks]:
            piece = [int(i) for i in ids[start : start + max_length]]
            if len(piece) >= 2:
                chunks.append(piece)
                owners.append(index)
    return chunks, np.asarray(owners, dtype=np.int64)


def gradient_squared_norms(a: Tensor, b: Tensor) -> Tensor:
    """‖Σ_t b_t a_tᵀ‖²_F = Σ_{t,s} (b_tᵀ b_s)(a_tᵀ a_s) per example, for a (B, T, in) and
    b (B, T, out), without forming the (out, in) gradient (float64)."""
    a, b = a.double(), b.double()
    return ((b @ b.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum(dim=(1, 2))


def mean_by_owner(values: np.ndarray, owners: np.ndarray, count: int) -> np.ndarray:
    """Mean of `values` (first axis) per owner; owners without values get zeros."""
    flat = values.reshape(len(values), int(np.prod(values.shape[1:])))
    sums = np.zeros((count, flat.shape[1]))
    np.add.at(sums, owners, flat)
    counts = np.bincount(owners, minlength=count).astype(np.float64)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.reshape((count, *values.shape[1:]))


@dataclass
class Batch:
    """One forward/backward: per layer inputs a (B, T, in) and output gradients b (B, T, out).

    b_t = ∂L_i/∂y_t with L_i the mean token loss of example i; `positions` (B, T) marks the loss
    positions (tokens that predict a next token); `counts` (B,) is n_i = positions per example.
    """

    inputs: dict[str, Tensor]
    grads: dict[str, Tensor]
    positions: Tensor
    counts: Tensor
    losses: Tensor


class _Capture:
    """Forward hooks that keep each layer's input and output (outputs are made differentiable)."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.layers = layers
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _Capture:
        for name, module in self.layers.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if not output.requires_grad:  # frozen model and no trainable layer upstream
                output.requires_grad_(True)
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output

        return hook


class GradientOptions(Protocol):
    """The options `LayerGradients` reads (distsel.core.config.InfluenceOptions has them)."""

    @property
    def layers(self) -> str: ...

    @property
    def max_chunks(self) -> int: ...

    @property
    def chunk_batch_size(self) -> int: ...


class LayerGradients:
    """Chunks documents and runs batches of chunks forward and backward, capturing per layer the
    inputs and output gradients (`Batch`) of the chosen linear layers.

    `layer_names` overrides the layers that `options.layers` selects (exact module names).
    `timings` accumulates seconds spent in forward/backward, projection and the rest.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        options: GradientOptions,
        max_length: int,
        device: str | torch.device = "cpu",
        layer_names: Sequence[str] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.options = options
        self.max_length = max_length
        self.layers = self._choose_layers(layer_names)
        dtype = next(model.parameters()).dtype
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.timings = dict.fromkeys(TIMERS, 0.0)

    def _choose_layers(self, names: Sequence[str] | None) -> dict[str, nn.Linear]:
        suffixes = ATTENTION + (MLP if self.options.layers == "attention+mlp" else ())
        if names is None:
            return find_linear_layers(self.model, suffixes)
        modules = dict(self.model.named_modules())
        missing = [name for name in names if not isinstance(modules.get(name), nn.Linear)]
        if missing:
            raise DistselError(f"influence: no linear layers named {', '.join(missing)}")
        return {name: modules[name] for name in names}

    def per_example_gradients(
        self, texts: Sequence[str], layers: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Full per-document gradients (n_docs, out, in), mean over chunks (for small models)."""
        names = list(self.layers) if layers is None else list(layers)
        with self._total():
            chunks, owners = self._chunks(texts)
            grads = {name: np.zeros((len(chunks), *self._shape(name))) for name in names}
            for indices, batch in self._batches(chunks):
                for name in names:
                    g = torch.einsum("bto,bti->boi", batch.grads[name], batch.inputs[name])
                    grads[name][indices] = g.double().cpu().numpy()
            return {name: mean_by_owner(g, owners, len(texts)) for name, g in grads.items()}

    # ---------------------------------------------------------------- forward/backward

    def _chunks(self, texts: Documents) -> tuple[list[list[int]], np.ndarray]:
        opts = self.options
        return chunk_documents(self.tokenizer, texts, self.max_length, opts.max_chunks)

    def _batches(self, chunks: list[list[int]]) -> Iterator[tuple[np.ndarray, Batch]]:
        """Batches of `batch_size` chunks, longest first (less padding), with their indices."""
        order = np.argsort([-len(c) for c in chunks], kind="stable")
        size = self.options.chunk_batch_size
        for start in range(0, len(order), size):
            indices = order[start : start + size]
            yield indices, self._forward_backward([chunks[i] for i in indices])

    def _forward_backward(self, chunks: list[list[int]]) -> Batch:
        """One forward, one backward of Σ_i L_i (L_i: mean token loss of chunk i, pads masked)."""
        with self._timer("forward_backward"):
            ids, mask = self._pad(chunks)
            with torch.enable_grad(), _Capture(self.layers) as capture:
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                losses, positions = _mean_token_losses(logits, ids, mask)
                names = list(self.layers)
                outputs = [capture.outputs[name] for name in names]
                grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
            cast = lambda t: t.to(self.dtype)  # noqa: E731
            return Batch(
                inputs={name: cast(capture.inputs[name]) for name in names},
                grads={
                    name: cast(torch.zeros_like(o) if g is None else g)
                    for name, g, o in zip(names, grads, outputs, strict=True)
                },
                positions=positions,
                counts=positions.sum(dim=1),
                losses=losses.detach(),
            )

    def _pad(self, chunks: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(len(c) for c in chunks)
        ids = torch.zeros((len(chunks), width), dtype=torch.long)
        mask = torch.zeros((len(chunks), width), dtype=torch.long)
        for row, chunk in enumerate(chunks):
            ids[row, : len(chunk)] = torch.tensor(chunk)
            mask[row, : len(chunk)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _token_pair(self, name: str, batch: Batch) -> tuple[Tensor, Tensor]:
        """(a_t, n_i b_t) at the loss positions: the per-token samples of the curvature."""
        scale = batch.counts.to(self.dtype)[:, None, None]
        positions = batch.positions
        return batch.inputs[name][positions], (batch.grads[name] * scale)[positions]

    # ---------------------------------------------------------------- helpers

    def _shape(self, name: str) -> tuple[int, int]:
        weight = self.layers[name].weight
        return int(weight.shape[0]), int(weight.shape[1])

    @contextmanager
    def _timer(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[key] += time.perf_counter() - start

    @contextmanager
    def _total(self) -> Iterator[None]:
        before = self.timings["forward_backward"] + self.timings["projection"]
        start = time.perf_counter()
        try:
            yield
        finally:
            inner = self.timings["forward_backward"] + self.timings["projection"] - before
            self.timings["rest"] += time.perf_counter() - start - inner


def _mean_token_losses(logits: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """L_i = mean over i's next-token losses, and the loss positions (B, T) (t predicts t + 1)."""
    targets = mask[:, 1:].bool()
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    token_losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    counts = targets.sum(dim=1).clamp(min=1)
    losses = (token_losses * targets).sum(dim=1) / counts
    positions = torch.cat([targets, torch.zeros_like(targets[:, :1])], dim=1)
    return losses, positions
