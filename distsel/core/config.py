"""Typed run configuration, loaded from YAML and validated with messages that name the key."""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from distsel.core.errors import ConfigError, credentials_in_url


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)


def _one_path_is_a_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _no_credentials(value: str) -> str:
    problem = credentials_in_url(value)
    if problem:
        raise ValueError(problem)
    return value


Location = Annotated[str, AfterValidator(_no_credentials)]
PathList = Annotated[list[Location], BeforeValidator(_one_path_is_a_list)]


class InputConfig(StrictModel):
    paths: Annotated[PathList, Field(min_length=1)]
    text_field: str = "text"
    id_field: str | None = None
    group_field: str | None = None
    label_field: str | None = None
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    max_chars: int = Field(default=1_000_000, gt=0)
    strict: bool = False
    # None: sized to the cluster's cores when the first run ingests (corpus.auto_rows_per_part).
    rows_per_part: int | None = Field(default=None, gt=0)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class TargetConfig(StrictModel):
    paths: PathList = Field(default_factory=list)
    text_field: str = "text"
    storage_options: dict[str, Any] = Field(default_factory=dict)


class OutputConfig(StrictModel):
    path: Location
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: how long an unreachable object store (output or input) is tried again before the run fails
    retry_seconds: float = Field(default=20.0, ge=0)
    #: selected/ holds id, the input's fields and the selector's score columns; these add
    #: distsel's own (tokens_approx, token_ids, embedding, any stage's output) or `all` of them
    columns: list[str] = Field(default_factory=list)
    format: Literal["parquet", "jsonl", "jsonl.gz", "jsonl.zst"] = "parquet"
    #: `loss`: a `weight` column in selected/, from the proxy's loss of each chosen document
    #: (distsel.algorithms.reweighting, temperature `weight_temperature`); runs `perplexity`
    weights: Literal["loss"] | None = None
    weight_temperature: float = Field(default=0.5, gt=0)


class Budget(StrictModel):
    """Exactly one of `docs`, `tokens` (tokens are approximated as ceil(chars / 4)),
    `docs_share` or `tokens_share` (a share of the accepted pool, 0 < share ≤ 1). A share is
    resolved when the selection starts (`resolved`): ceil(share · pool documents) documents or
    ceil(share · pool tokens) tokens, so selectors only ever read `docs` or `tokens`."""

    docs: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    docs_share: float | None = Field(default=None, gt=0, le=1)
    tokens_share: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [self.docs, self.tokens, self.docs_share, self.tokens_share]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of 'docs', 'tokens', 'docs_share' or 'tokens_share'")
        return self

    @property
    def share(self) -> float | None:
        """The share of the pool asked for, if the budget was given as one."""
        return self.docs_share if self.docs_share is not None else self.tokens_share

    @property
    def by_tokens(self) -> bool:
        """Whether the resolved budget counts tokens (else documents)."""
        return self.tokens is not None

    @property
    def limit(self) -> int | None:
        """The resolved budget: its tokens, or its documents (None for an unresolved share)."""
        return self.tokens if self.by_tokens else self.docs

    def resolved(self, pool_docs: int, pool_tokens: int) -> Budget:
        """This budget in documents or tokens: a share becomes ceil(share · pool documents) or
        ceil(share · pool tokens) (at least 1), kept beside the share it came from (the copy is
        not validated again: it holds both); a budget in documents or tokens is returned as is."""
        if self.share is None:
            return self
        by_docs = self.docs_share is not None
        # The share as written (0.07, not 0.0700000000000000067…), so 0.07 · 100 is 7, not 8.
        exact = Fraction(repr(self.share)) * (pool_docs if by_docs else pool_tokens)
        count = max(1, math.ceil(exact))
        return self.model_copy(update={"docs" if by_docs else "tokens": count})


class DedupConfig(StrictModel):
    """Near-duplicate removal before any selector (distsel.app.dedup): every document of a
    cluster of near duplicates but the one it keeps is quarantined as `near_duplicate`.

    minhash: MinHash LSH over word n-gram shingles (distsel.algorithms.minhash); two documents
    are near duplicates when their estimated Jaccard similarity is at least `threshold`.
    ngram 1 (the default, the sets of a document's words) finds copies with a few per cent of
    their words edited, which longer shingles miss: one edited word changes n of them
    (benchmarks/dedup.py); ngram 5 is DataTrove's and NeMo Curator's setting.

    semantic: SemDeDup (distsel.algorithms.semdedup) inside the cluster stage's k-means
    clusters of the embeddings: a document whose cosine to a kept one exceeds 1 − `epsilon`."""

    method: Literal["minhash", "semantic"]
    threshold: float = Field(default=0.8, gt=0, lt=1)
    ngram: int = Field(default=1, ge=1, le=16)
    num_perm: int = Field(default=112, ge=16, le=1024)
    epsilon: float = Field(default=0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _settings_of_the_method(self) -> DedupConfig:
        others = {"minhash": {"epsilon"}, "semantic": {"threshold", "ngram", "num_perm"}}
        fields = type(self).model_fields
        given = sorted(n for n in others[self.method] if getattr(self, n) != fields[n].default)
        if given:
            raise ValueError(f"{', '.join(given)}: not a setting of method '{self.method}'")
        return self

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages the check reads."""
        return ("cluster",) if self.method == "semantic" else ()

    def settings(self) -> dict[str, Any]:
        """The settings that change the check's result."""
        names = {"minhash": ("threshold", "ngram", "num_perm"), "semantic": ("epsilon",)}
        return {"method": self.method, **{n: getattr(self, n) for n in names[self.method]}}


class EmbedConfig(StrictModel):
    """The encoder for the embedding stage (default: the bundled all-MiniLM-L6-v2)."""

    model: str | None = None
    max_length: int = Field(default=256, gt=0)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class ProxyConfig(StrictModel):
    """The small decoder LM behind perplexity and influence: a local folder, or trained here."""

    path: str | None = None
    layers: int = Field(default=2, gt=0)
    hidden: int = Field(default=128, gt=0)
    heads: int = Field(default=4, gt=0)
    intermediate: int | None = None
    tokenizer: Literal["bpe", "minilm"] = "bpe"
    vocab_size: int = Field(default=8192, gt=255)
    max_length: int = Field(default=256, gt=1)
    train_tokens: int = Field(default=1_000_000, gt=0)
    sample_docs: int = Field(default=20_000, gt=0)
    # Training tokens are at most max_passes × the tokens of the training sample (null: no
    # limit; at least 1: a smaller sample is `train_tokens`' business). Muennighoff et al. 2023,
    # "Scaling Data-Constrained Language Models": up to about 4 epochs of repeated data are
    # almost as good as new data.
    max_passes: float | None = Field(default=4.0, ge=1)
    batch_size: int = Field(default=16, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ProxyConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class MixtureOptions(StrictModel):
    """Mixture-weight search over groups with small proxy LMs (RegMix / Ray Tune). Groups are
    the values of `group_field` (default: input.group_field), or with `group_field: cluster`
    the k-means clusters of the documents' embeddings."""

    group_field: str | None = None
    # With group_field `cluster`: the groups are k-means clusters of the embeddings, this many.
    clusters: int = Field(default=8, ge=2)
    mode: Literal["tune", "regmix", "doremi"] = "tune"
    trials: int = Field(default=16, gt=0)
    max_concurrent: int = Field(default=2, gt=0)
    train_tokens: int = Field(default=200_000, gt=0)
    report_every: int = Field(default=20, gt=0)
    trial_cpus: float = Field(default=1.0, gt=0)
    trial_gpus: float = Field(default=0.0, ge=0)
    asha: bool = True
    heldout_docs: int = Field(default=200, gt=0)
    regmix_samples: int = Field(default=100_000, gt=0)
    regmix_top: int = Field(default=128, gt=0)


def _registered_method(method: str) -> str:
    from distsel.core import registry

    if method not in registry.selector_names():
        known = ", ".join(f"'{name}'" for name in registry.selector_names())
        raise ValueError(f"Input should be one of {known}")
    return method


class SelectConfig(StrictModel):
    """`method`: any selector a module registers (distsel.core.registry.register_selector); a
    method's options are `select.<method>`, validated by the options class it registered (read
    them with `options(method)`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    method: Annotated[str, AfterValidator(_registered_method)] = "all"
    budget: Budget | None = None

    @model_validator(mode="after")
    def _registered_options(self) -> SelectConfig:
        from distsel.core import registry

        for method, value in (self.model_extra or {}).items():
            if method not in registry.selector_names():
                raise ValueError(f"select.{method}: unknown key")
            self.model_extra[method] = _registered(
                f"select.{method}", registry.selector_options(method), value
            )
        return self

    def options(self, method: str) -> Any:
        """The options of `method` (`select.<method>`, validated by the options class its module
        registered): as given, else that class's defaults; None for a method without options."""
        from distsel.core import registry

        given = (self.model_extra or {}).get(method)
        options = registry.selector_options(method)
        return given if given is not None or options is None else options()

    @model_validator(mode="after")
    def _budget_when_needed(self) -> SelectConfig:
        from distsel.core import registry

        if registry.needs_budget(self.method) and self.budget is None:
            raise ValueError(
                f"select.method '{self.method}' needs select.budget "
                "(docs:, tokens:, docs_share: or tokens_share:)"
            )
        return self


class StageConfig(StrictModel):
    """Resource overrides for one scoring stage, and the options of a stage that registers an
    options class (`Stage.options_class`), validated against it."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    num_cpus: float | None = Field(default=None, gt=0)
    num_gpus: float | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, gt=0)
    pool_size: int | None = Field(default=None, gt=0)

    def resources(self) -> dict[str, Any]:
        """The resource overrides that are set."""
        fields = type(self).model_fields
        return {k: v for k, v in self.model_dump(include=set(fields)).items() if v is not None}


def _registered(where: str, options: type[BaseModel] | None, value: Any) -> BaseModel:
    if options is None:
        raise ValueError(f"{where}: this method takes no options")
    try:
        return options.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(_describe(error, where) for error in exc.errors())
        raise ValueError(problems) from None


class RayConfig(StrictModel):
    address: str | None = None


# What one `distsel run` does: everything, or one phase (see distsel.app.pipeline.run).
Phase = Literal["all", "score", "select", "mixture"]
PHASES: tuple[str, ...] = get_args(Phase)


# Options that lived under select.* before they moved to their stage: old key -> new keys. A
# configuration that still uses an old key is read as if it used the new ones (with a warning).
MOVED_OPTIONS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("dsir", "num_buckets"): (("dsir", "num_buckets"), ("betr", "num_buckets")),
    ("dsir", "ngrams"): (("dsir", "ngrams"), ("betr", "ngrams")),
    ("similarity", "aggregate"): (("similarity", "aggregate"),),
    ("similarity", "betr_sample"): (("betr", "sample"),),
    ("similarity", "betr_top_fraction"): (("betr", "top_fraction"),),
    ("quad", "clusters"): (("cluster", "clusters"),),
    ("quad", "metric"): (("cluster", "metric"),),
    ("influence", "batch_size"): (("influence", "chunk_batch_size"),),
    **{
        ("influence", name): (("influence", name),)
        for name in (
            "layers",
            "curvature",
            "damping",
            "projection_dim",
            "target_aggregation",
            "target_examples",
            "max_chunks",
        )
    },
    **{
        ("classifier", name): (("classifier", name),)
        for name in ("negatives", "max_positives", "num_buckets", "ngrams", "c")
    },
}


def _move_old_options(data: Any) -> Any:
    """select.<method>.<key> of MOVED_OPTIONS to stages.<stage>.<key>, unless set there."""
    select = data.get("select") if isinstance(data, dict) else None
    if not isinstance(select, dict):
        return data
    data, select = dict(data), dict(select)
    stages = dict(data.get("stages") or {})
    for (method, key), targets in MOVED_OPTIONS.items():
        options = select.get(method)
        if not isinstance(options, dict) or key not in options:
            continue
        value = options[key]
        select[method] = {k: v for k, v in options.items() if k != key}
        for stage, name in targets:
            given = stages.get(stage)
            stages[stage] = {name: value, **(given if isinstance(given, dict) else {})}
        new = ", ".join(f"stages.{stage}.{name}" for stage, name in targets)
        logging.getLogger("distsel").warning("config: select.%s.%s is now %s", method, key, new)
        if not select[method]:
            del select[method]
    data.update(select=select, stages=stages)
    return data


class Config(StrictModel):
    input: InputConfig
    target: TargetConfig = Field(default_factory=TargetConfig)
    output: OutputConfig
    select: SelectConfig = Field(default_factory=SelectConfig)
    dedup: DedupConfig | None = None
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    mixture: MixtureOptions = Field(default_factory=MixtureOptions)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _move_old_options(data)

    @model_validator(mode="after")
    def _targets_when_needed(self) -> Config:
        from distsel.core import registry

        if registry.needs_target(self.select.method) and not self.target.paths:
            raise ValueError(f"select.method '{self.select.method}' needs target.paths")
        return self

    @model_validator(mode="after")
    def _stage_options(self) -> Config:
        from distsel.core import registry

        for name, stage in self.stages.items():
            if stage.model_extra:
                options = registry.stage_class(name).options_class
                stage.model_extra.update(
                    _registered(f"stages.{name}", options, stage.model_extra).model_dump()
                )
        return self

    def listed_stages(self) -> list[str]:
        """The stages that `stages:` adds to a run: those listed empty or with resources. An
        entry that only sets a stage's options configures it without adding it."""
        return [
            name
            for name, stage in self.stages.items()
            if stage.resources() or not stage.model_extra
        ]

    def stage_options(self, name: str) -> BaseModel | None:
        """The options of stage `name` (its `options_class`): `stages.<name>` without the
        resource keys, else the defaults."""
        from distsel.core import registry

        options = registry.stage_class(name).options_class
        given = self.stages.get(name)
        if options is None:
            return None
        return options.model_validate((given.model_extra if given else None) or {})


def _describe(error: dict[str, Any], prefix: str = "") -> str:
    key = ".".join([prefix, *map(str, error["loc"])] if prefix else map(str, error["loc"]))
    if not key:  # a check of the whole configuration, whose message names its keys
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {error['msg'].removeprefix('Value error, ')}"


def parse_config(data: Any, source: str = "configuration") -> Config:
    """Validate a mapping into a Config; every problem is listed (on one line) with its
    dotted key."""
    _require_mapping(data, source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"{source}: invalid configuration: {problems}") from None


def _require_mapping(data: Any, source: str, key: str = "") -> None:
    if not isinstance(data, dict):
        where = f"{key}: expected a mapping" if key else "expected a mapping at the top level"
        raise ConfigError(f"{source}: {where}, got {type(data).__name__}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file; `overrides` maps dotted keys (e.g. 'output.path') to values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    data = {} if data is None else data
    _require_mapping(data, str(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, str(path))
    return parse_config(data, str(path))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    for depth, part in enumerate(parents):
        if data.get(part) is None:
            data[part] = {}
        data = data[part]
        _require_mapping(data, source, ".".join(parents[: depth + 1]))
    data[leaf] = value
