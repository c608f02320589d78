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

Framework-free: the Ray stage (distsel.methods.influence) wraps `InfluenceScorer`; the fitted
state is a dict of numpy arrays. Gradient capture and chunking: distsel.algorithms.layer_gradients;
the projection and the curvature's sums: distsel.algorithms.kronecker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from distsel.algorithms.kronecker import Accumulator, KroneckerProjection
from distsel.algorithms.layer_gradients import (
    Batch,
    Documents,
    GradientOptions,
    LayerGradients,
    gradient_squared_norms,
    mean_by_owner,
)
from distsel.core.errors import DistselError

# Projected dimension of `target_aggregation: max` when projection_dim is unset.
MAX_AGGREGATION_DIM = 8192


class ScorerOptions(GradientOptions, Protocol):
    """The options `InfluenceScorer` reads (distsel.core.config.InfluenceOptions has them)."""

    @property
    def curvature(self) -> str: ...

    @property
    def damping(self) -> float: ...

    @property
    def projection_dim(self) -> int | None: ...

    @property
    def target_aggregation(self) -> str: ...

    @property
    def target_examples(self) -> int: ...

    @property
    def contrast(self) -> str: ...


class InfluenceScorer(LayerGradients):
    """Fit the target iHVP once (`fit`), then score candidate documents (`score`).

    `layer_names` overrides the layers that `options.layers` selects (exact module names).
    `timings` accumulates seconds spent in forward/backward, projection and the rest.
    """

    options: ScorerOptions

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        options: ScorerOptions,
        max_length: int,
        device: str | torch.device = "cpu",
        *,
        seed: int = 0,
        projection: Literal["rademacher", "gaussian"] = "rademacher",
        layer_names: Sequence[str] | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__(model, tokenizer, options, max_length, device, layer_names)
        self.normalize = normalize
        self.seed = seed
        self.projection_kind = projection
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
        options: ScorerOptions,
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

    def _target_sums(self, chunks: list[list[int]]) -> dict[str, Accumulator]:
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

    def _accumulator(self, name: str) -> Accumulator:
        n_out, n_in = self._shape(name)
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=self.device)  # noqa: E731
        return Accumulator(zeros(n_in, n_in), zeros(n_out, n_out), zeros(n_out, n_in))

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

    def _fit_curvature(self, chunks: list[list[int]], sums: dict[str, Accumulator]) -> None:
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

    def _projected_pair(self, name: str, batch: Batch) -> tuple[Tensor, Tensor]:
        a, b = batch.inputs[name], batch.grads[name]
        if self.projector is None:
            return a, b
        with self._timer("projection"):
            return self.projector.inputs(name, a), self.projector.outputs(name, b)

    # ---------------------------------------------------------------- helpers

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


def _seed(arrays: dict[str, np.ndarray]) -> int:
    seed = np.asarray(arrays.get("seed", 0))
    if seed.dtype.kind not in "iu" or seed.shape != ():
        raise DistselError("influence state: 'seed' must be an integer scalar")
    return int(seed)
