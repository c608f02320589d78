"""Influence of candidate documents on a target set, over chosen linear layers of a causal LM.

Method: Quad (Zhang et al., "Harnessing Diversity for Important Data Selection in Pretraining Large
Language Models", ICLR 2025), which takes influence on attention layers with an EK-FAC curvature
(George et al. 2018; Grosse et al. 2023).

For a candidate chunk z and the target set R, over layers l (curvature block-diagonal over layers):

    I(z) = ∇L(R)ᵀ (G + λI)⁻¹ ∇L(z) = Σ_l ⟨H_l, ∇_l L(z)⟩,   H_l = (G_l + λ_l I)⁻¹ ∇_l L(R)

where L(z) is the mean token loss of chunk z and L(R) the mean of L over the target chunks.
I(z) > 0: a preconditioned gradient step on z lowers L(R). A document is cut into chunks of
`max_length` tokens (at most `max_chunks`); its score is the mean of its chunk scores.

Per-example gradients. A linear layer y_t = W a_t with b_t = ∂L_i/∂y_t gives ∇_W L_i = Σ_t b_t a_tᵀ.
Inputs a_t are saved by forward hooks; b_t come from one backward of Σ_i L_i per batch (example i's
outputs reach only L_i). Scores use Σ_t b_tᵀ H a_t, so ∇L(z) is never formed.

Curvature, from the target chunks' per-token pairs (a_t, b_t) over loss positions, pooled, with b_t
rescaled by the example's token count n_i (the gradient of the summed token loss):

    A = E_t[a_t a_tᵀ] = Q_A Λ_A Q_Aᵀ,   S = E_t[b_t b_tᵀ] = Q_S Λ_S Q_Sᵀ
    K-FAC:   Λ[o, i] = Λ_S[o] Λ_A[i]
    EK-FAC:  Λ[o, i] = E_t[(q_S,oᵀ b_t)² (q_A,iᵀ a_t)²]   (best diagonal fit, in the Kronecker
             eigenbasis, of the per-token Fisher F = E_t[vec(b_t a_tᵀ) vec(b_t a_tᵀ)ᵀ])
    H_l = Q_S [(Q_Sᵀ g_R Q_A) ⊘ (Λ + λ)] Q_Aᵀ,   λ = damping · mean(Λ),   g_R = ∇_l L(R)
    identity: H_l = g_R (plain gradient dot product).

Unlike the authors' code, the inverse divides by (Λ + λ), and candidates and iHVP cover the same
layers under the same projection.

Normalised influence, after LESS (Xia et al. 2024): raw inner products favour short, high-loss
texts, whose gradients are large. Each chunk's score is also divided by its gradient's norm,
I(z)/‖∇L(z)‖ with ‖∇L(z)‖² = Σ_l ‖G_l‖²_F, and per layer, from the token Gram matrices alone,

    ‖G_l‖²_F = ‖Σ_t b_t a_tᵀ‖²_F = Σ_{t,s} (b_tᵀ b_s)(a_tᵀ a_s)

(projected a_t, b_t under a projection: the norm of the projected gradient).

Target aggregation. `mean` scores against g_R, the gradient of the target's mean loss. `max`
(after LESS and RDS+, which take a document's best match over target examples or tasks) scores
against each target chunk j on its own, H_j = (G + λI)⁻¹ ∇L(j) under the same curvature, projected
and scaled to unit length, and keeps the best: I(z) = max_j ⟨P∇L(z), PH_j⟩ / ‖PH_j‖ (normalised:
also divided by ‖P∇L(z)‖, a cosine). The projection keeps the n_targets × d matrix of PH_j small.

Contrastive influence (`contrast: pool`, for topic-level targets). A small proxy's g_R is dominated
by a direction shared by all text of the target's style (format, length, frequent tokens), so it
ranks every same-style document alike. Scoring against the target's mean gradient minus the pool's,

    I_c(z) = (∇L(R) − ∇L(P))ᵀ (G + λI)⁻¹ ∇L(z),   normalised: I_c(z)/‖∇L(z)‖,

with L(P) the mean loss over the chunks of a seeded sample of `contrast_docs` pool documents,
cancels that direction: DSIR's log p_target − log p_pool moved into gradient space (METHODS,
"Contrastive influence"). With `max`, each H_j = (G + λI)⁻¹ (∇L(j) − ∇L(P)). G stays fitted on
the target chunks: plain and contrastive scores then share one curvature and differ only in the
direction, and the pool sample costs one more forward/backward pass, not two (EK-FAC's refit).
LESS's alternative, warming the proxy on a small sample before taking gradients, is not taken.

Projection (optional, seeded): per layer P_l = P_out ⊗ P_in, P_out (k_out × out), P_in (k_in × in)
with Rademacher or Gaussian entries of variance 1/k, so E[⟨Px, Py⟩] = ⟨x, y⟩, and
k_out · k_in ≈ d / n_layers (a factor whose k reaches its side is the identity). Then
P_out ∇L(z) P_inᵀ = Σ_t (P_out b_t)(P_in a_t)ᵀ, and the projected score is
Σ_l ⟨P_out H_l P_inᵀ, P_out ∇_l L(z) P_inᵀ⟩.

Framework-free: the Ray stage wraps `InfluenceScorer`; the fitted state is a dict of numpy arrays.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distsel.core.config import Config, InfluenceOptions, InfluenceSelectOptions
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.pool import Pool
from distsel.core.registry import register_selector, register_stage
from distsel.core.samplers import descending, fill_budget
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import Resources, Stage, StageContext
from distsel.methods.embed import _with_cluster_gpus
from distsel.methods.proxy import ensure_proxy, load_proxy
from distsel.methods.similarity import sample_texts
from distsel.methods.tokens import are_texts, document_ids, ids_or_texts

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TIMERS = ("forward_backward", "projection", "rest")
# Projected dimension of `target_aggregation: max` when projection_dim is unset.
MAX_AGGREGATION_DIM = 8192
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


def _split_budget(budget: int, n_out: int, n_in: int) -> tuple[int, int]:
    """k_out · k_in ≈ budget, as equal as the sides allow (each k within [1, side]).

    For nearly low-rank gradients the relative error of a Kronecker projection grows like
    1/k_out + 1/k_in (each factor is a JL estimate), which equal sides minimise; a side whose
    k reaches its size is exact.
    """
    k_in = min(n_in, max(1, math.isqrt(budget)))
    k_out = min(n_out, max(1, budget // k_in))
    k_in = min(n_in, max(1, budget // k_out))
    return k_out, k_in


def _random_factor(k: int, n: int, generator: torch.Generator, kind: str) -> Tensor | None:
    if k >= n:
        return None
    if kind == "gaussian":
        values = torch.randn(k, n, generator=generator, dtype=torch.float64)
    else:
        values = torch.randint(0, 2, (k, n), generator=generator).to(torch.float64) * 2 - 1
    return values / math.sqrt(k)


class KroneckerProjection:
    """Per layer P = P_out ⊗ P_in (a None factor is the identity); seeded, so actors rebuild it."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        dim: int,
        seed: int,
        kind: Literal["rademacher", "gaussian"] = "rademacher",
    ) -> None:
        budget = max(1, dim // len(shapes))
        self.factors: dict[str, tuple[Tensor | None, Tensor | None]] = {}
        for index, (name, (n_out, n_in)) in enumerate(shapes.items()):
            k_out, k_in = _split_budget(budget, n_out, n_in)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            self.factors[name] = (
                _random_factor(k_out, n_out, generator, kind),
                _random_factor(k_in, n_in, generator, kind),
            )

    def to(self, device: torch.device, dtype: torch.dtype) -> KroneckerProjection:
        for name, pair in self.factors.items():
            self.factors[name] = tuple(  # type: ignore[assignment]
                None if p is None else p.to(device=device, dtype=dtype) for p in pair
            )
        return self

    def outputs(self, name: str, b: Tensor) -> Tensor:
        """P_out b_t for every token (last axis = out)."""
        p_out = self.factors[name][0]
        return b if p_out is None else b @ p_out.T

    def inputs(self, name: str, a: Tensor) -> Tensor:
        """P_in a_t for every token (last axis = in)."""
        p_in = self.factors[name][1]
        return a if p_in is None else a @ p_in.T

    def matrix(self, name: str, g: Tensor) -> Tensor:
        """P_out G P_inᵀ of explicit matrices G (..., out, in)."""
        return self.inputs(name, self.outputs(name, g.transpose(-1, -2)).transpose(-1, -2))


@dataclass
class _Accumulator:
    """Sums over the target's loss positions for one layer."""

    a_cov: Tensor
    b_cov: Tensor
    grad: Tensor
    tokens: int = 0


class InfluenceScorer:
    """Fit the target iHVP once (`fit`), then score candidate documents (`score`).

    `layer_names` overrides the layers that `options.layers` selects (exact module names).
    `timings` accumulates seconds spent in forward/backward, projection and the rest.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        options: InfluenceOptions,
        max_length: int,
        device: str | torch.device = "cpu",
        *,
        seed: int = 0,
        projection: Literal["rademacher", "gaussian"] = "rademacher",
        layer_names: Sequence[str] | None = None,
        normalize: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.normalize = normalize
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.options = options
        self.max_length = max_length
        self.seed = seed
        self.projection_kind = projection
        self.layers = self._choose_layers(layer_names)
        dtype = next(model.parameters()).dtype
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.ihvp: dict[str, Tensor] | None = None
        self.target_gradient: dict[str, Tensor] | None = None
        # with contrast `pool`: ∇L(P), the gradient of the pool sample's mean chunk loss
        self.pool_gradient: dict[str, Tensor] | None = None
        # with target_aggregation max: (n_target_chunks, dim) unit rows PH_j
        self.target_examples: Tensor | None = None
        # per layer (Q_S, Q_A, Λ) after fit with K-FAC or EK-FAC; G_l = (Q_S ⊗ Q_A) diag(Λ) (…)ᵀ
        self.curvature: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.projector: KroneckerProjection | None = None
        self._projected: dict[str, Tensor] | None = None
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

    # ---------------------------------------------------------------- public API

    def fit(
        self, target_texts: Sequence[str], pool_texts: Documents | None = None
    ) -> InfluenceScorer:
        """Curvature from the target chunks (≤ target_examples), then H_l = (G_l + λ_l I)⁻¹ g_R;
        with contrast `pool`, H_l = (G_l + λ_l I)⁻¹ (g_R − g_P), g_P from `pool_texts` (a pool
        sample, needed then and only then)."""
        contrast = self.options.contrast == "pool"
        if contrast and pool_texts is None:
            raise DistselError("influence: contrast 'pool' needs a pool sample to fit")
        if not contrast and pool_texts is not None:
            raise DistselError("influence: a pool sample is used only with contrast 'pool'")
        with self._total():
            chunks = self._target_chunks(target_texts)
            sums = self._target_sums(chunks)
            self.target_gradient = {name: acc.grad / len(chunks) for name, acc in sums.items()}
            self.pool_gradient = self._pool_gradient(pool_texts) if contrast else None
            direction = self._direction(self.target_gradient)
            if self.options.curvature == "identity":
                self.ihvp = {k: g.to(self.dtype) for k, g in direction.items()}
            else:
                self._fit_curvature(chunks, sums)
                self.ihvp = {name: self._inverse(name, g) for name, g in direction.items()}
            self._set_projection()
            if self.options.target_aggregation == "max":
                self.target_examples = self._target_example_vectors(chunks)
        return self

    def score(self, texts: Documents) -> np.ndarray:
        """I(z) per text (float64): mean over its chunks of Σ_l Σ_t (P_out b_t)ᵀ H̃_l (P_in a_t);
        with `normalize`, of I(chunk)/‖∇L(chunk)‖."""
        raw, normalized = self.score_both(texts)
        return normalized if self.normalize else raw

    def score_both(self, texts: Documents) -> tuple[np.ndarray, np.ndarray]:
        """(raw, normalised) influence per text, from one forward/backward per chunk."""
        ihvp = self._fitted()
        if self.target_examples is not None:
            return self._score_max(texts, self.target_examples)
        with self._total():
            chunks, owners = self._chunks(texts)
            raw, squared_norms = np.zeros(len(chunks)), np.zeros(len(chunks))
            for indices, batch in self._batches(chunks):
                total = torch.zeros(len(indices), dtype=self.dtype, device=self.device)
                squared = torch.zeros(len(indices), dtype=torch.float64, device=self.device)
                for name in self.layers:
                    a, b = self._projected_pair(name, batch)
                    total += ((b @ ihvp[name]) * a).sum(dim=(1, 2))
                    squared += gradient_squared_norms(a, b)
                raw[indices] = total.double().cpu().numpy()
                squared_norms[indices] = squared.cpu().numpy()
            norms = np.sqrt(squared_norms)
            normalized = np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0)
            count = len(texts)
            return mean_by_owner(raw, owners, count), mean_by_owner(normalized, owners, count)

    def _score_max(self, texts: Documents, examples: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """max_j over target chunks of the mean over a text's chunks of ⟨Pg, ĥ_j⟩ (raw) and
        ⟨Pg, ĥ_j⟩/‖Pg‖ (normalised)."""
        with self._total():
            chunks, owners = self._chunks(texts)
            raw = np.zeros((len(chunks), len(examples)))
            normalized = np.zeros_like(raw)
            for indices, batch in self._batches(chunks):
                gradients = self._projected_gradients(batch)
                dots = gradients @ examples.T
                norms = gradients.double().norm(dim=1, keepdim=True)
                raw[indices] = dots.double().cpu().numpy()
                normalized[indices] = torch.where(norms > 0, dots / norms, 0.0).cpu().numpy()
            count = len(texts)
            return (
                mean_by_owner(raw, owners, count).max(axis=1),
                mean_by_owner(normalized, owners, count).max(axis=1),
            )

    def _projected_gradients(self, batch: Batch) -> Tensor:
        """(B, dim): per layer P_out ∇L P_inᵀ = Σ_t (P_out b_t)(P_in a_t)ᵀ, flattened and joined."""
        parts = []
        for name in self.layers:
            a, b = self._projected_pair(name, batch)
            parts.append(torch.einsum("bto,bti->boi", b, a).flatten(1))
        return torch.cat(parts, dim=1)

    def project_gradients(self, texts: Sequence[str]) -> np.ndarray:
        """(n_docs, d) float32: per layer P_out ∇L P_inᵀ flattened, layers concatenated, mean
        over chunks; `score(texts) == project_gradients(texts) @ target_vector()` (up to rounding).
        Without projection_dim: the full gradients of the chosen layers."""
        with self._total():
            chunks, owners = self._chunks(texts)
            rows = np.zeros((len(chunks), self.dim), dtype=np.float64)
            for indices, batch in self._batches(chunks):
                rows[indices] = self._projected_gradients(batch).double().cpu().numpy()
            return mean_by_owner(rows, owners, len(texts)).astype(np.float32)

    def target_vector(self) -> np.ndarray:
        """The (projected) iHVP flattened in the order of `project_gradients` (float64)."""
        ihvp = self._fitted()
        return torch.cat([ihvp[name].flatten() for name in self.layers]).double().cpu().numpy()

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

    def token_pairs(self, target_texts: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-token (a_t, n_i b_t) over the loss positions of the chunks `fit` would use: the
        samples the curvature is estimated from (for exact checks on small models)."""
        pairs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
            name: ([], []) for name in self.layers
        }
        for _, batch in self._batches(self._target_chunks(target_texts)):
            for name in self.layers:
                a, b = self._token_pair(name, batch)
                pairs[name][0].append(a.double().cpu().numpy())
                pairs[name][1].append(b.double().cpu().numpy())
        return {name: (np.concatenate(a), np.concatenate(b)) for name, (a, b) in pairs.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (full iHVP per layer, projection seed) for Ray's object store."""
        ihvp = self._full_ihvp()
        arrays = {f"ihvp/{name}": h.cpu().numpy() for name, h in ihvp.items()}
        arrays["seed"] = np.asarray(self.seed, dtype=np.int64)
        if self.target_examples is not None:
            arrays["target_examples"] = self.target_examples.cpu().numpy()
        return arrays

    @classmethod
    def from_state(
        cls,
        model: nn.Module,
        tokenizer: Any,
        options: InfluenceOptions,
        max_length: int,
        device: str | torch.device,
        arrays: dict[str, np.ndarray],
        **kwargs: Any,
    ) -> InfluenceScorer:
        """A fitted scorer from `state()`; the projection follows `options` and the stored seed."""
        names = [key.removeprefix("ihvp/") for key in arrays if key.startswith("ihvp/")]
        kwargs.setdefault("layer_names", names)
        scorer = cls(model, tokenizer, options, max_length, device, seed=_seed(arrays), **kwargs)
        scorer.ihvp = scorer._load_ihvp(arrays)
        scorer._set_projection()
        if options.target_aggregation == "max":
            scorer.target_examples = scorer._load_target_examples(arrays)
        return scorer

    @property
    def dim(self) -> int:
        """Length of a (projected) gradient vector over the chosen layers."""
        if self.projector is None:
            return sum(out * inp for out, inp in map(self._shape, self.layers))
        return sum(self._projected_shape(name).numel() for name in self.layers)

    # ---------------------------------------------------------------- fitting

    def _target_chunks(self, texts: Sequence[str]) -> list[list[int]]:
        chunks = self._chunks(texts)[0][: self.options.target_examples]
        if not chunks:
            raise DistselError("influence: the target texts have no chunk of 2 or more tokens")
        return chunks

    def _target_sums(self, chunks: list[list[int]]) -> dict[str, _Accumulator]:
        """Σ_t a aᵀ, Σ_t (n b)(n b)ᵀ over loss positions and Σ_i ∇L_i = Σ_t b aᵀ, per layer."""
        sums = {name: self._accumulator(name) for name in self.layers}
        for _, batch in self._batches(chunks):
            for name, acc in sums.items():
                a, b = self._token_pair(name, batch)
                acc.a_cov += (a.T @ a).double()
                acc.b_cov += (b.T @ b).double()
                acc.grad += torch.einsum("bto,bti->oi", batch.grads[name], batch.inputs[name])
                acc.tokens += len(a)
        return sums

    def _accumulator(self, name: str) -> _Accumulator:
        n_out, n_in = self._shape(name)
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=self.device)  # noqa: E731
        return _Accumulator(zeros(n_in, n_in), zeros(n_out, n_out), zeros(n_out, n_in))

    def _pool_gradient(self, texts: Documents) -> dict[str, Tensor]:
        """g_P = ∇L(P), L(P) the mean over the pool sample's chunks of their mean token loss."""
        chunks = self._chunks(texts)[0]
        if not chunks:
            raise DistselError("influence: the pool sample has no chunk of 2 or more tokens")
        sums = {name: self._accumulator(name).grad for name in self.layers}
        for _, batch in self._batches(chunks):
            for name, total in sums.items():
                total += torch.einsum("bto,bti->oi", batch.grads[name], batch.inputs[name])
        return {name: total / len(chunks) for name, total in sums.items()}

    def _direction(self, gradients: dict[str, Tensor]) -> dict[str, Tensor]:
        """The gradients less g_P under contrast `pool` (broadcast over leading axes)."""
        if self.pool_gradient is None:
            return gradients
        return {name: g - self.pool_gradient[name].to(g.dtype) for name, g in gradients.items()}

    def _fit_curvature(self, chunks: list[list[int]], sums: dict[str, _Accumulator]) -> None:
        """Per layer (Q_S, Q_A, Λ) with K-FAC or EK-FAC eigenvalues Λ, into `self.curvature`;
        then H_l = Q_S [(Q_Sᵀ g Q_A) ⊘ (Λ + λ)] Q_Aᵀ (`_inverse`)."""
        bases = {}
        for name, acc in sums.items():
            eig_a, q_a = torch.linalg.eigh(acc.a_cov / acc.tokens)
            eig_s, q_s = torch.linalg.eigh(acc.b_cov / acc.tokens)
            bases[name] = (q_s, q_a, torch.outer(eig_s.clamp(min=0), eig_a.clamp(min=0)))
        if self.options.curvature == "ekfac":
            refit = self._refit_eigenvalues(chunks, bases)
            bases = {name: (q_s, q_a, refit[name]) for name, (q_s, q_a, _) in bases.items()}
        self.curvature = bases

    def _inverse(self, name: str, gradients: Tensor) -> Tensor:
        """(G_l + λ_l I)⁻¹ g for gradients (..., out, in) of layer `name`; g under identity."""
        if self.options.curvature == "identity":
            return gradients.to(self.dtype)
        q_s, q_a, eigenvalues = self.curvature[name]
        damping = self.options.damping * eigenvalues.mean()
        rotated = q_s.T @ gradients.double() @ q_a
        return (q_s @ (rotated / (eigenvalues + damping)) @ q_a.T).to(self.dtype)

    def _target_example_vectors(self, chunks: list[list[int]]) -> Tensor:
        """(n_chunks, dim): each target chunk's P(G + λI)⁻¹∇L(j) (with contrast `pool`,
        P(G + λI)⁻¹(∇L(j) − g_P)), scaled to unit length."""
        assert self.projector is not None
        rows = torch.zeros((len(chunks), self.dim), dtype=self.dtype, device=self.device)
        for indices, batch in self._batches(chunks):
            parts = []
            for name in self.layers:
                gradients = torch.einsum("bto,bti->boi", batch.grads[name], batch.inputs[name])
                inverse = self._inverse(name, self._direction({name: gradients})[name])
                parts.append(self.projector.matrix(name, inverse).flatten(1))
            rows[torch.as_tensor(indices, device=self.device)] = torch.cat(parts, dim=1)
        norms = rows.norm(dim=1, keepdim=True)
        return torch.where(norms > 0, rows / norms, 0.0)

    def _refit_eigenvalues(
        self, chunks: list[list[int]], bases: dict[str, tuple[Tensor, Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """EK-FAC: Λ[o, i] = E_t[(q_S,oᵀ b_t)² (q_A,iᵀ a_t)²] (a second pass over the target)."""
        sums = {name: torch.zeros_like(eig) for name, (_, _, eig) in bases.items()}
        tokens = 0
        for _, batch in self._batches(chunks):
            for name, (q_s, q_a, _) in bases.items():
                a, b = self._token_pair(name, batch)
                a_rot = (a.double() @ q_a) ** 2
                b_rot = (b.double() @ q_s) ** 2
                sums[name] += b_rot.T @ a_rot
            tokens += int(batch.counts.sum())
        return {name: total / tokens for name, total in sums.items()}

    def _set_projection(self) -> None:
        dim = self.options.projection_dim
        if dim is None and self.options.target_aggregation == "max":
            dim = MAX_AGGREGATION_DIM
        if dim is None:
            self.projector, self._projected = None, None
            return
        shapes = {name: self._shape(name) for name in self.layers}
        projector = KroneckerProjection(shapes, dim, self.seed, self.projection_kind)
        self.projector = projector.to(self.device, self.dtype)
        full = self._full_ihvp()
        self._projected = {name: projector.matrix(name, h) for name, h in full.items()}

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

    def _projected_pair(self, name: str, batch: Batch) -> tuple[Tensor, Tensor]:
        a, b = batch.inputs[name], batch.grads[name]
        if self.projector is None:
            return a, b
        with self._timer("projection"):
            return self.projector.inputs(name, a), self.projector.outputs(name, b)

    # ---------------------------------------------------------------- helpers

    def _shape(self, name: str) -> tuple[int, int]:
        weight = self.layers[name].weight
        return int(weight.shape[0]), int(weight.shape[1])

    def _projected_shape(self, name: str) -> torch.Size:
        assert self._projected is not None
        return self._projected[name].shape

    def _full_ihvp(self) -> dict[str, Tensor]:
        if self.ihvp is None:
            raise DistselError("influence: call fit() (or from_state) before scoring")
        return self.ihvp

    def _fitted(self) -> dict[str, Tensor]:
        full = self._full_ihvp()
        return full if self._projected is None else self._projected

    def _load_ihvp(self, arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
        ihvp = {}
        for name in self.layers:
            array = np.asarray(arrays[f"ihvp/{name}"])
            if array.dtype.kind != "f" or array.shape != self._shape(name):
                raise DistselError(
                    f"influence state: ihvp/{name} has {array.dtype} {array.shape}, "
                    f"expected a float array of shape {self._shape(name)}"
                )
            ihvp[name] = torch.from_numpy(array.copy()).to(self.device, self.dtype)
        return ihvp

    def _load_target_examples(self, arrays: dict[str, np.ndarray]) -> Tensor:
        examples = np.asarray(arrays.get("target_examples", np.zeros((0, 0))))
        if examples.dtype.kind != "f" or examples.ndim != 2 or examples.shape[1] != self.dim:
            raise DistselError(
                f"influence state: target_examples has {examples.dtype} {examples.shape}, "
                f"expected a float array of shape (n, {self.dim})"
            )
        return torch.from_numpy(examples.copy()).to(self.device, self.dtype)

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


def _seed(arrays: dict[str, np.ndarray]) -> int:
    seed = np.asarray(arrays.get("seed", 0))
    if seed.dtype.kind not in "iu" or seed.shape != ():
        raise DistselError("influence state: 'seed' must be an integer scalar")
    return int(seed)


# ---------------------------------------------------------------------------------------------
# Pipeline stage


@register_stage
class InfluenceStage(Stage):
    """Influence of every document on the target set, under the run's proxy LM.

    `prepare` trains or loads the proxy, then fits the curvature and the target iHVP once, in one
    Ray task; the fitted arrays travel with the stage to every actor. With contrast `pool` it
    first draws the pool sample (`sample_texts`: each part sends only its sampled rows), whose
    digest enters the fingerprint: a new sample (other parts) rescores every part.
    """

    name = "influence"
    input_columns = ()
    requires = ("proxy_tokens",)
    tokenizes_texts = True
    output_columns = ("influence", "influence_normalized")
    default_resources = Resources(num_cpus=1, batch_size=64)
    fitted = ("folder", "proxy_info", "arrays", "contrast_sample")
    options_class = InfluenceOptions

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.config = config
        self.options = config.stage_options(self.name)
        self.folder: str | None = None
        self.proxy_info: dict[str, Any] = {}
        self.arrays: dict[str, np.ndarray] = {}
        # with contrast `pool`: {"docs": n, "sha256": digest of the sample's texts}
        self.contrast_sample: dict[str, Any] = {}
        self.scorer: InfluenceScorer | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> InfluenceStage:
        if not config.target.paths:
            raise DistselError("the influence stage needs target.paths (target examples)")
        return cls(_with_cluster_gpus(resources, config.stages.get(cls.name)), config)

    def fingerprint(self) -> dict[str, Any]:
        # `normalize` picks a column at selection; the stage writes both. Without contrast, the
        # options read as before contrast existed (earlier runs keep their scores).
        exclude = {"chunk_batch_size"}
        if self.options.contrast == "none":
            exclude |= {"contrast", "contrast_docs"}
        fingerprint = {
            "name": self.name,
            "options": self.options.model_dump(exclude=exclude),
            "proxy": self.proxy_info.get("weights_sha256") or self.folder,
            "target": self.config.target.model_dump(exclude={"storage_options"}),
            "seed": self.config.seed,
        }
        if self.options.contrast == "pool":
            fingerprint["contrast_sample"] = self.contrast_sample
        return fingerprint

    def fit_inputs(self, context: StageContext) -> dict[str, Any]:
        # The sample follows from the parts, the seed and contrast_docs (all in the fit's key).
        fingerprint = {k: v for k, v in self.fingerprint().items() if k != "contrast_sample"}
        return {**fingerprint, "proxy": self.config.proxy.model_dump()}

    def prepare(self, context: StageContext) -> None:
        from distsel.core.corpus import read_texts

        self.folder, self.proxy_info = ensure_proxy(context)
        target = self.config.target
        texts = read_texts(target.paths, target.text_field, target.storage_options)
        rng = np.random.default_rng(self.config.seed)
        if len(texts) > self.options.target_examples:
            keep = np.sort(rng.choice(len(texts), self.options.target_examples, replace=False))
            texts = [texts[i] for i in keep]
        pool = self.pool_sample(context)
        resources = self.resources
        self.arrays = current().call(
            _fit_state, self, texts, pool, num_cpus=resources.num_cpus, num_gpus=resources.num_gpus
        )
        self.summary = {
            "proxy": self.proxy_info,
            "target_examples": len(texts),
            "layers": self.options.layers,
            "curvature": self.options.curvature,
            "projection_dim": self.options.projection_dim,
            "target_aggregation": self.options.target_aggregation,
            "contrast": self.options.contrast,
            **({"contrast_docs": len(pool)} if pool is not None else {}),
        }

    def pool_sample(self, context: StageContext) -> list[str] | None:
        """With contrast `pool`: a seeded uniform sample of `contrast_docs` accepted documents'
        texts (recorded in `contrast_sample`); else None."""
        self.contrast_sample = {}
        if self.options.contrast != "pool":
            return None
        pool = sample_texts(
            context.store, context.parts, self.options.contrast_docs, self.config.seed
        )
        digest = hashlib.sha256()
        for text in pool:
            digest.update(hashlib.sha256(text.encode()).digest())
        self.contrast_sample = {"docs": len(pool), "sha256": digest.hexdigest()}
        return pool

    def setup(self) -> None:
        self.scorer = self._scorer(self.arrays)

    def _scorer(self, arrays: dict[str, np.ndarray] | None) -> InfluenceScorer:
        torch.set_num_threads(max(1, int(self.resources.num_cpus)))
        device = "cuda" if self.resources.num_gpus else "cpu"
        model, tokenizer = load_proxy(self.folder, device, self.config.output.storage_options)
        max_length = self.config.proxy.max_length
        if arrays is None:
            return InfluenceScorer(
                model, tokenizer, self.options, max_length, device, seed=self.config.seed
            )
        return InfluenceScorer.from_state(
            model, tokenizer, self.options, max_length, device, arrays
        )

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Scores the proxy_tokens stage's ids, or, given only texts, the texts."""
        raw, normalized = self.scorer.score_both(ids_or_texts(batch, "proxy_token_ids"))
        return {"influence": raw, "influence_normalized": normalized}


def _fit_state(
    stage: InfluenceStage, target_texts: list[str], pool_texts: list[str] | None
) -> dict[str, np.ndarray]:
    return stage._scorer(None).fit(target_texts, pool_texts).state()


@register_selector("influence", options=InfluenceSelectOptions, needs_target=True)
class InfluenceSelector:
    """Top-k by influence on the target under the proxy LM (trained here unless proxy.path)."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("influence",)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        normalize = config.select.influence.normalize
        column = "influence_normalized" if normalize else "influence"
        order = descending(score_column(pool, column), pool.random_key)
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        options = {**config.stage_options("influence").model_dump(), "normalize": normalize}
        return chosen, {"budget": budget_section(config), **options}
