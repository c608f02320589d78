"""The mixture selector: the pool's groups as token streams for the mixture search
(distsel.methods.mixture), the search itself, and the budget sampled from the groups by the best
weights."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from distsel.core import layout
from distsel.core.errors import DistselError
from distsel.core.pool import fetch_texts
from distsel.core.registry import register_selector
from distsel.methods.mixture.sampling import (
    CLUSTER_GROUPS,
    GroupSizes,
    PoolParts,
    group_field,
    group_samples,
    heldout_sample,
    mixture_plan,
    sample_by_weights,
)

if TYPE_CHECKING:
    from distsel.core.config import Config
    from distsel.core.pool import Pool
    from distsel.core.stage import StageContext
    from distsel.core.storage import Store
    from distsel.methods.mixture.sampling import MixturePlan
    from distsel.methods.mixture.trials import MixtureData

log = logging.getLogger("distsel")

# A group's sample is read until its approximate tokens (chars / 4) reach this many times the
# stream cap, since a small BPE vocabulary cuts text finer than 4 characters a token.
SAMPLE_MARGIN = 2.0


# ---------------------------------------------------------------------------------------------
# The trials' data


def prepare_data(config: Config, context: StageContext) -> tuple[MixtureData, dict]:
    """The trials' data, from OUTPUT/mixture/tokens when it was made under the same settings,
    else tokenised now; and a summary of the groups. The pool is read part by part
    (distsel.methods.mixture.sampling)."""
    from distsel.methods.mixture.trials import MixtureData

    store, source = context.store, pool_parts(config, context)
    sizes = source.sizes()
    groups = sizes.groups
    if len(groups) < 2:
        raise DistselError(
            f"mixture search needs at least 2 groups in '{source.field}', found {groups}"
        )
    fingerprint = _tokens_fingerprint(int(sizes.docs.sum()), config, source.field, groups)
    meta_path = layout.MIXTURE_TOKENS_META
    meta = store.read_json(meta_path) if store.exists(meta_path) else None
    if meta is None or meta.get("fingerprint") != fingerprint:
        meta = _tokenise(source, sizes, fingerprint)
    streams = [_load(store, meta["files"][g]) for g in groups]
    L = config.proxy.max_length
    data = MixtureData(
        groups=groups,
        streams=streams,
        target=_load(store, meta["files"]["(target)"]).reshape(-1, L),
        heldout=_load(store, meta["files"]["(heldout)"]).reshape(-1, L),
        vocab_size=int(meta["vocab_size"]),
        proxy=config.proxy,
        train_tokens=config.mixture.train_tokens,
        report_every=config.mixture.report_every,
        seed=config.seed,
        threads=max(1, int(config.mixture.trial_cpus)),
        use_gpu=config.mixture.trial_gpus > 0,
    )
    natural = sizes.natural()
    summary = {
        g: {
            "pool_docs": int(sizes.docs[i]),
            "pool_tokens": int(sizes.tokens[i]),
            "natural": float(natural[i]),
            "stream_tokens": int(len(streams[i])),
        }
        for i, g in enumerate(groups)
    }
    section = {"field": source.field, "groups": summary, "vocab_size": data.vocab_size}
    return data, section


def pool_parts(config: Config, context: StageContext) -> PoolParts:
    """The pool the selection reads, part by part: the context's parts less its left-out rows."""
    return PoolParts(context.store, context.parts, config, dict(context.left_out))


def _tokens_fingerprint(pool_docs: int, config: Config, field: str, groups: list[str]) -> dict:
    proxy = config.proxy
    settings = {
        "field": field,
        "groups": groups,
        "pool_docs": pool_docs,
        "seed": config.seed,
        "tokenizer": [proxy.tokenizer, proxy.vocab_size, proxy.max_length, proxy.sample_docs],
        "cap": config.mixture.train_tokens,
        "heldout_docs": config.mixture.heldout_docs,
        "target": [config.target.paths, config.target.text_field],
    }
    return json.loads(json.dumps(settings))


def _tokenise(source: PoolParts, sizes: GroupSizes, fingerprint: dict) -> dict:
    """Tokenise a seeded sample of each group (at most train_tokens tokens), the held-out slice
    and the target with one BPE tokenizer trained on a sample mixed equally over the groups;
    save each as int32 .npy under OUTPUT/mixture/tokens (meta.json, written last, names them).
    The held-out slice is the first heldout_docs of the pool's random order (at most half the
    pool); a group's sample, its documents after them in that order until their approximate
    tokens reach SAMPLE_MARGIN · train_tokens (at most sample_docs)."""
    from distsel.core.records import read_texts
    from distsel.methods.mixture.trials import eval_sequences
    from distsel.methods.proxy_model import make_tokenizer, token_stream

    began = time.perf_counter()
    config, store, groups = source.config, source.store, sizes.groups
    options, proxy = config.mixture, config.proxy
    heldout = heldout_sample(source, min(options.heldout_docs, int(sizes.docs.sum()) // 2))
    floor = SAMPLE_MARGIN * options.train_tokens
    sampled, samples = group_samples(source, sizes, heldout, floor, proxy.sample_docs)
    texts = fetch_texts(store, sampled, samples) + fetch_texts(store, heldout[0], [heldout[1]])
    per_group = max(1, proxy.sample_docs // len(groups))
    tokenizer = make_tokenizer(proxy, [t for group in texts[:-1] for t in group[:per_group]])
    target = read_texts(
        config.target.paths, config.target.text_field, config.target.storage_options
    )
    if not target:
        raise DistselError("mixture search needs target texts (target.paths)")
    target = [target[i] for i in np.random.default_rng(config.seed).permutation(len(target))]
    arrays = {
        g: token_stream(tokenizer, t, options.train_tokens)[: options.train_tokens]
        for g, t in zip(groups, texts[:-1], strict=True)
    }
    L = proxy.max_length
    arrays["(heldout)"] = eval_sequences(token_stream(tokenizer, texts[-1], 1 << 62), L)
    arrays["(target)"] = eval_sequences(
        token_stream(tokenizer, target[: proxy.sample_docs], 1 << 62), L
    )
    files = _file_names(list(arrays))
    for name, array in arrays.items():
        _save(store, files[name], array)
    meta = {
        "fingerprint": fingerprint,
        "files": files,
        "vocab_size": len(tokenizer),
        "tokens": {name: int(array.size) for name, array in arrays.items()},
        "seconds": round(time.perf_counter() - began, 3),
    }
    store.write_json(layout.MIXTURE_TOKENS_META, meta)
    log.info("mixture: tokenised %d groups in %.1f s", len(groups), meta["seconds"])
    return meta


def _file_names(names: list[str]) -> dict[str, str]:
    """OUTPUT-relative .npy paths: groups under tokens/, the evaluation sets under eval/."""
    files, used = {}, set()
    for name in names:
        if name in ("(target)", "(heldout)"):
            files[name] = layout.mixture_eval(name.strip("()"))
            continue
        stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip(".") or "group"
        while stem in used:
            stem += "_"
        used.add(stem)
        files[name] = layout.mixture_tokens(stem)
    return files


def _save(store: Store, path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.int32), allow_pickle=False)
    store.write_bytes(path, buffer.getvalue())


def _load(store: Store, path: str) -> np.ndarray:
    return np.load(io.BytesIO(store.fs.cat_file(store.path(path))), allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# Entry points


def run_mixture_search(
    config: Config, context: StageContext, callbacks: list | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Search the group mixture (`mixture.mode`: tune, regmix or doremi) with proxies trained on
    `mixture.train_tokens` tokens each; return the best weights and the manifest section
    (best_weights, best_loss, baseline_losses {uniform, natural}, trials, mode, proxy_steps,
    groups, ...). An interrupted search raises MixtureInterrupted; a rerun resumes it from the
    finished trials kept as JSON in OUTPUT/mixture/trials/ (nothing is unpickled).
    `callbacks`: extra Ray Tune callbacks for the trials this call runs (e.g. progress)."""
    # The search modules import torch and Ray Tune: loaded only when a search runs.
    from distsel.methods.mixture.doremi import doremi_search
    from distsel.methods.mixture.regmix import regmix_search
    from distsel.methods.mixture.tune import tune_search

    began = time.perf_counter()
    data, summary = prepare_data(config, context)
    natural = np.array([summary["groups"][g]["natural"] for g in data.groups])
    searches = {"tune": tune_search, "regmix": regmix_search, "doremi": doremi_search}
    search = searches[config.mixture.mode]
    weights, section = search(data, config, context.store, natural, callbacks)
    proxy = {
        "steps_per_trial": data.steps,
        "tokens_per_trial": data.steps * config.proxy.batch_size * config.proxy.max_length,
        "reports": data.reports,
    }
    section = {"mode": config.mixture.mode, **summary, **section, "proxy": proxy}
    section["seconds"] = round(time.perf_counter() - began, 3)
    log.info("mixture: best %s (target loss %.4f)", weights, section["best_loss"])
    return weights, section


@register_selector("mixture", needs_target=True)
class MixtureSelector:
    """Search the group mixture with proxy LMs, then sample the budget by the best weights.
    The mixture phase (`distsel run --phase mixture`) runs only its `search`. Neither gathers
    the pool: the search reads the groups' sizes and samples part by part, and the selection
    is each part's heads of its groups' random orders (distsel.methods.mixture.sampling)."""

    search_output = layout.MIXTURE_SEARCH

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("embed", "cluster") if group_field(config) == CLUSTER_GROUPS else ()

    def plan(
        self, store: Store, parts: list[str], config: Config, dropped: dict[str, np.ndarray]
    ) -> MixturePlan:
        """The search's weights (run now, or its finished trials reused), as each group's share
        of the budget."""
        from distsel.core.stage import StageContext

        context = StageContext(config, store, parts, dropped)
        weights, section = run_mixture_search(config, context)
        sizes = GroupSizes.of_summary(section["groups"])
        budget = config.select.budget
        return mixture_plan(sizes, group_field(config), weights, budget, config.seed, section)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        budget = config.select.budget
        if pool.plan is not None:
            chosen, section = pool.plan.chosen(pool), dict(pool.plan.search)
        else:  # the whole pool, when the budget covers it
            weights, section = run_mixture_search(config, context)
            chosen = sample_by_weights(pool, group_field(config), weights, budget, config.seed)
        section["budget"] = budget.model_dump(exclude_none=True) if budget else None
        return chosen, section

    def search(self, config: Config, context: StageContext) -> dict[str, Any]:
        """The search alone (`run_mixture_search`): its manifest section."""
        return run_mixture_search(config, context)[1]
