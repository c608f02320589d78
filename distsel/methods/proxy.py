"""The run's proxy LM: trained once per output on a pool sample (on the cluster), saved as
safetensors under OUTPUT/proxy/, reused while its inputs stay the same; the perplexity and
proxy_tokens stages that use it. The model, its tokenizer, training and losses are in
distsel.methods.proxy_model."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distsel.algorithms.tokens import document_ids
from distsel.core import layout
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.progress import Progress
from distsel.core.registry import register_stage
from distsel.core.stage import Resources, Stage, StageContext, digest
from distsel.core.storage import Store
from distsel.methods.embed import with_cluster_gpus
from distsel.methods.tokens import (
    id_columns,
    ids_or_texts,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from distsel.core.config import Config, ProxyConfig


log = logging.getLogger("distsel")


def proxy_fingerprint(config: ProxyConfig, seed: int) -> dict[str, Any]:
    """What a trained proxy is made from: the proxy options and the seed (as JSON reads back)."""
    return json.loads(json.dumps({"proxy": config.model_dump(), "seed": seed}))


def ensure_proxy(context: StageContext) -> tuple[str, dict[str, Any]]:
    """The proxy folder for a run and its info: `proxy.path` when given; else OUTPUT/proxy when
    it holds a proxy trained under the same fingerprint; else one trained now on a seeded sample
    of `proxy.sample_docs` pool documents, in one Ray task (a GPU when the cluster has one)."""
    from distsel.methods.proxy_model import INFO_FILE

    config, store = context.config, context.store
    if config.proxy.path:
        return config.proxy.path, user_proxy_info(config.proxy.path, store.storage_options)
    folder = f"{store.url}/{layout.PROXY}"
    # trained on a sample of the pool: another part list (a changed input) trains it again
    fingerprint = {**proxy_fingerprint(config.proxy, config.seed), "parts": digest(context.parts)}
    info_path = layout.proxy(INFO_FILE)
    if store.exists(info_path):
        info = store.read_json(info_path)
        if info.get("fingerprint") == fingerprint:
            log.info("proxy: reusing %s (%s parameters)", folder, info.get("params"))
            return folder, {**info, "path": folder}
        log.info("proxy: %s was trained with other settings; training again", folder)
    from distsel.methods.similarity import sample_texts

    texts = sample_texts(
        store, context.parts, config.proxy.sample_docs, config.seed, context.left_out_of()
    )
    options = store.storage_options
    info = train_on_cluster(texts, config.proxy, config.seed, folder, options, fingerprint)
    return folder, {**info, "path": folder}


def user_proxy_info(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A given proxy's `distsel_proxy.json` when it has one; else its path and parameter count
    (from local safetensors headers; None for a remote folder)."""
    from distsel.methods.proxy_model import INFO_FILE, safetensors_parameters

    store = Store(path, storage_options)
    if store.exists(INFO_FILE):
        return {**store.read_json(INFO_FILE), "path": path}
    params = safetensors_parameters(store.root) if store.is_local else None
    return {"path": path, "params": params}


def training_resources() -> tuple[int, int]:
    """(CPUs, GPUs) for the training task: one GPU when the cluster has one; the CPUs of the
    largest eligible node, at most MAX_TRAINING_CPUS."""
    from distsel.methods.proxy_model import MAX_TRAINING_CPUS

    executor = current()
    wants_gpu = executor.totals().get("GPU", 0) >= 1
    nodes = executor.nodes()
    eligible = [r for r in nodes if r.get("GPU", 0) >= 1] if wants_gpu else nodes
    cpus = max((int(r.get("CPU", 0)) for r in eligible), default=1)
    return max(1, min(MAX_TRAINING_CPUS, cpus)), int(wants_gpu)


def train_on_cluster(
    texts: list[str],
    config: ProxyConfig,
    seed: int,
    folder: str,
    storage_options: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a proxy in one task and save it to `folder`; return the info saved with it
    (its `fingerprint`: the one given, else proxy_fingerprint's for `config` and `seed`)."""
    from distsel.methods.proxy_model import PROGRESS_FILE

    cpus, gpus = training_resources()
    fingerprint = fingerprint or proxy_fingerprint(config, seed)
    log.info("proxy: training on %s documents (%d CPUs, %d GPUs)", f"{len(texts):,}", cpus, gpus)
    level = log.getEffectiveLevel()
    # The task's progress lines reach the driver's console through a file in the proxy folder.
    progress = Progress(Store(folder, storage_options, retry_seconds=0), PROGRESS_FILE)
    args = (texts, config, seed, folder, storage_options, cpus, fingerprint, level, progress)
    return current().call(_train_and_save, *args, num_cpus=cpus, num_gpus=gpus, progress=progress)


def _train_and_save(
    texts: list[str],
    config: ProxyConfig,
    seed: int,
    folder: str,
    storage_options: dict[str, Any] | None,
    cpus: int,
    fingerprint: dict[str, Any],
    log_level: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    import torch

    from distsel.methods.proxy_model import save_proxy, train_proxy

    if not log.handlers:
        log.addHandler(logging.StreamHandler())
    log.setLevel(log_level)
    torch.set_num_threads(cpus)
    device = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() else "cpu"
    model, tokenizer, info = train_proxy(texts, config, seed, device, progress)
    info = {**info, "documents": len(texts), "fingerprint": fingerprint}
    return save_proxy(model, tokenizer, info, folder, storage_options)


# ---------------------------------------------------------------------------------------------
# Pipeline stage


@register_stage
class PerplexityStage(Stage):
    """Each document's mean token loss under the proxy LM (perplexity = exp(loss)); on a
    cluster with GPUs each actor takes one GPU."""

    name = "perplexity"
    input_columns = ()
    requires = ("proxy_tokens",)
    tokenizes_texts = True
    output_columns = ("perplexity_loss",)
    default_resources = Resources(num_cpus=1, batch_size=64)

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.options = config.proxy
        self.seed = config.seed
        self.storage_options = dict(config.output.storage_options)
        self.folder: str | None = None
        self.info: dict[str, Any] = {}
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> PerplexityStage:
        return cls(with_cluster_gpus(resources, config.stages.get(cls.name)), config)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "proxy": self.options.model_dump(),
            "seed": self.seed,
            "weights_sha256": self.info.get("weights_sha256"),
        }

    def prepare(self, context: StageContext) -> None:
        self.folder, self.info = ensure_proxy(context)
        self.summary = {"proxy": self.info}

    def setup(self) -> None:
        import torch

        from distsel.methods.proxy_model import load_proxy

        if self.folder is None:
            raise DistselError("the perplexity stage was not prepared (no proxy folder)")
        torch.set_num_threads(max(1, int(self.resources.num_cpus)))
        device = "cuda" if self.resources.num_gpus else "cpu"
        self.model, self.tokenizer = load_proxy(self.folder, device, self.storage_options)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        from distsel.methods.proxy_model import document_losses

        losses = document_losses(
            self.model,
            self.tokenizer,
            ids_or_texts(batch, "proxy_token_ids"),
            self.options.max_length,
            batch_size=64 if self.resources.num_gpus else 16,
            device=str(self.model.device),
        )
        return {"perplexity_loss": losses}


@register_stage
class ProxyTokensStage(Stage):
    """Every document's ids under the proxy LM's tokenizer, on CPU actors: its first
    proxy.max_length × stages.influence.max_chunks (`tokens.document_ids`), which the influence
    and perplexity stages read instead of tokenizing again. Trains the proxy (`ensure_proxy`)
    when the run has none yet."""

    name = "proxy_tokens"
    input_columns = ("text",)
    output_columns = ("proxy_token_ids", "proxy_n_tokens")
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.storage_options = dict(config.output.storage_options)
        chunks = config.stage_options("influence").max_chunks
        self.max_tokens = config.proxy.max_length * chunks
        self.folder: str | None = None
        self.info: dict[str, Any] = {}
        self.tokenizer: PreTrainedTokenizerBase | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> ProxyTokensStage:
        return cls(resources, config)

    def fingerprint(self) -> dict[str, Any]:
        proxy = self.info.get("weights_sha256") or self.folder
        return {"name": self.name, "proxy": proxy, "max_tokens": self.max_tokens}

    def prepare(self, context: StageContext) -> None:
        self.folder, self.info = ensure_proxy(context)

    def setup(self) -> None:
        from transformers import AutoTokenizer

        from distsel.methods.proxy_model import local_folder

        if self.folder is None:
            raise DistselError("the proxy_tokens stage was not prepared (no proxy folder)")
        with local_folder(self.folder, self.storage_options) as local:
            self.tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)

    def __call__(self, batch: pa.Table) -> dict[str, pa.Array]:
        ids = document_ids(self.tokenizer, batch.column("text").to_pylist(), self.max_tokens)
        return id_columns(ids, "proxy_token_ids", "proxy_n_tokens")
