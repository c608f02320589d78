"""The influence stage and selector: each document's influence on the target set under the
run's proxy LM, after Quad (Zhang et al., "Harnessing Diversity for Important Data Selection in
Pretraining Large Language Models", ICLR 2025). The maths (EK-FAC curvature, iHVP, projection,
normalised and contrastive scores) is `InfluenceScorer`, in distsel.algorithms.influence."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import AliasChoices, Field

from distsel.core.config import Config, StrictModel
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.pool import Pool
from distsel.core.registry import register_selector, register_stage
from distsel.core.samplers import descending, fill_budget
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import Resources, Stage, StageContext
from distsel.methods.embed import with_cluster_gpus
from distsel.methods.similarity import sample_texts
from distsel.methods.tokens import ids_or_texts

if TYPE_CHECKING:  # torch, the proxy and the scorer load where a stage scores, not to validate
    from distsel.algorithms.influence import InfluenceScorer


class InfluenceOptions(StrictModel):
    """`stages.influence`: I(z) = ∇L(R)ᵀ (G + λI)⁻¹ ∇L(z) over the chosen linear layers of the
    proxy. `chunk_batch_size`: chunks per forward/backward (`batch_size` beside it is the
    stage's rows per call, as for every stage)."""

    layers: Literal["attention", "attention+mlp"] = "attention"
    curvature: Literal["ekfac", "kfac", "identity"] = "ekfac"
    damping: float = Field(default=0.1, gt=0)
    projection_dim: int | None = Field(default=None, gt=0)
    # `mean`: against the gradient of the whole target's mean loss; `max`: a document's best match
    # over the target examples (LESS, RDS+), in a projected space of projection_dim (default
    # MAX_AGGREGATION_DIM) dimensions.
    target_aggregation: Literal["mean", "max"] = "mean"
    target_examples: int = Field(default=1_000, gt=0)
    # `pool`: contrastive influence, against ∇L(R) − ∇L(P) with ∇L(P) the gradient of the mean
    # loss over a seeded sample of `contrast_docs` pool documents (cancels the direction shared by
    # all text of the target's style; for topic-level targets). `none`: against ∇L(R).
    contrast: Literal["none", "pool"] = "none"
    # ∇L(P)'s shared direction is the largest part of every document's gradient, so a few hundred
    # documents estimate it (its error falls as 1/√n); each costs a gradient
    contrast_docs: int = Field(default=256, gt=0)
    max_chunks: int = Field(default=4, gt=0)
    chunk_batch_size: int = Field(
        default=8, gt=0, validation_alias=AliasChoices("chunk_batch_size", "batch_size")
    )


class InfluenceSelectOptions(StrictModel):
    """`select.influence` (and the column behind Quad's rewards): rank by I(z)/‖∇L(z)‖ (LESS)
    rather than I(z); the influence stage writes both columns either way."""

    normalize: bool = True


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
        return cls(with_cluster_gpus(resources, config.stages.get(cls.name)), config)

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
        from distsel.core.records import read_texts
        from distsel.methods.proxy import ensure_proxy

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
            context.store,
            context.parts,
            self.options.contrast_docs,
            self.config.seed,
            context.left_out_of(),
        )
        digest = hashlib.sha256()
        for text in pool:
            digest.update(hashlib.sha256(text.encode()).digest())
        self.contrast_sample = {"docs": len(pool), "sha256": digest.hexdigest()}
        return pool

    def setup(self) -> None:
        self.scorer = self._scorer(self.arrays)

    def _scorer(self, arrays: dict[str, np.ndarray] | None) -> InfluenceScorer:
        import torch

        from distsel.algorithms.influence import InfluenceScorer
        from distsel.methods.proxy_model import load_proxy

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

    def rankings(self, pool: Pool, config: Config) -> list[np.ndarray]:
        normalize = config.select.options("influence").normalize
        column = "influence_normalized" if normalize else "influence"
        return [descending(score_column(pool, column), pool.random_key)]

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(self.rankings(pool, config)[0], pool.tokens, config.select.budget)
        normalize = config.select.options("influence").normalize
        options = {**config.stage_options("influence").model_dump(), "normalize": normalize}
        return chosen, {"budget": budget_section(config), **options}
