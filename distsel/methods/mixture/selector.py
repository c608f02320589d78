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

from distsel.algorithms.simplex import natural_weights, water_fill
from distsel.core import layout
from distsel.core.config import Budget
from distsel.core.errors import DistselError
from distsel.core.pool import Pool, fetch_texts
from distsel.core.registry import register_selector
from distsel.core.samplers import fill_budget, random_order

if TYPE_CHECKING:
    from distsel.core.config import Config, ProxyConfig
    from distsel.core.stage import StageContext
    from distsel.core.storage import Store
    from distsel.methods.mixture.trials import MixtureData

log = logging.getLogger("distsel")

# mixture.group_field naming the k-means clusters as groups.
CLUSTER_GROUPS = "cluster"
# A group's sample is read until its approximate tokens (chars / 4) reach this many times the
# stream cap, since a small BPE vocabulary cuts text finer than 4 characters a token.
SAMPLE_MARGIN = 2.0


# ---------------------------------------------------------------------------------------------
# Groups


def group_field(config: Config) -> str:
    """The pool field holding each document's group: mixture.group_field, else input.group_field."""
    name = config.mixture.group_field or config.input.group_field
    if not name:
        raise DistselError("select.method 'mixture' needs mixture.group_field or input.group_field")
    return name


def group_values(pool: Pool, field: str) -> np.ndarray:
    """Each document's group: the passed-through field's value, or for `cluster` its k-means
    cluster (as "cluster-<id>")."""
    if field == CLUSTER_GROUPS and CLUSTER_GROUPS in pool.scores:
        ids = pool.scores[CLUSTER_GROUPS].astype(np.int64).astype(str)
        return np.char.add("cluster-", ids).astype(object)
    if field in pool.categories:
        return pool.categories[field]
    known = [*pool.categories, CLUSTER_GROUPS]
    raise DistselError(f"the pool has no group field '{field}' (known: {known})")


# ---------------------------------------------------------------------------------------------
# Sampling the selection by the weights


def sample_by_weights(
    pool: Pool, groups_field: str, weights: dict[str, float], budget: Budget, seed: int = 0
) -> np.ndarray:
    """Pool indices sampled from the groups in proportion to `weights`, to the exact budget.

    Each group is read in its seeded random order (`pool.random_key`). docs: group g gets
    apportion(docs, w)_g documents; tokens: group g is filled (keep each document that still
    fits) up to its apportioned share of the tokens, then the tokens left over go to the
    remaining documents in random order, so the total never exceeds the budget. A group that
    runs out gives everything it has and the rest is shared again over the groups left, in
    proportion to their weights (groups of weight 0 only once all others are exhausted).
    `seed` mixes the key order of the leftover pass.
    """
    values = group_values(pool, groups_field)
    names = sorted(set(values.tolist()) | set(weights))
    orders = {g: _group_order(pool, values, g) for g in names}
    w = np.array([max(0.0, float(weights.get(g, 0.0))) for g in names])
    by_tokens, limit = budget.by_tokens, budget.limit
    sizes = {g: (pool.tokens[o].sum() if by_tokens else len(o)) for g, o in orders.items()}
    shares = water_fill(limit, w, np.array([sizes[g] for g in names], dtype=np.int64))
    chosen = [
        _take(orders[g], pool.tokens, int(s), by_tokens) for g, s in zip(names, shares, strict=True)
    ]
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    if by_tokens:
        picked = _top_up(pool, picked, limit, seed)
    return picked


def _group_order(pool: Pool, values: np.ndarray, group: str) -> np.ndarray:
    members = np.flatnonzero(values == group)
    return members[random_order(pool.random_key[members])]


def _take(order: np.ndarray, tokens: np.ndarray, share: int, by_tokens: bool) -> np.ndarray:
    if share <= 0:
        return np.zeros(0, np.int64)
    budget = Budget(tokens=share) if by_tokens else Budget(docs=share)
    return fill_budget(order, tokens, budget)


def _top_up(pool: Pool, picked: np.ndarray, limit: int, seed: int) -> np.ndarray:
    left = limit - int(pool.tokens[picked].sum())
    if left <= 0:
        return picked
    rest = np.setdiff1d(np.arange(len(pool)), picked)
    keys = pool.random_key[rest] ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    extra = _take(rest[random_order(keys)], pool.tokens, left, by_tokens=True)
    return np.concatenate([picked, extra])


# ---------------------------------------------------------------------------------------------
# The trials' data


def prepare_data(pool: Pool, config: Config, context: StageContext) -> tuple[MixtureData, dict]:
    """The trials' data, from OUTPUT/mixture/tokens when it was made under the same settings,
    else tokenised now; and a summary of the groups."""
    from distsel.methods.mixture.trials import MixtureData

    store, field = context.store, group_field(config)
    values = group_values(pool, field)
    groups = sorted(set(values.tolist()))
    if len(groups) < 2:
        raise DistselError(f"mixture search needs at least 2 groups in '{field}', found {groups}")
    fingerprint = _tokens_fingerprint(pool, config, field, groups)
    meta_path = layout.MIXTURE_TOKENS_META
    meta = store.read_json(meta_path) if store.exists(meta_path) else None
    if meta is None or meta.get("fingerprint") != fingerprint:
        meta = _tokenise(pool, config, context, groups, fingerprint)
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
    natural = natural_weights(values, pool.tokens, groups)
    summary = {
        g: {
            "pool_docs": int(np.count_nonzero(values == g)),
            "pool_tokens": int(pool.tokens[values == g].sum()),
            "natural": float(natural[i]),
            "stream_tokens": int(len(streams[i])),
        }
        for i, g in enumerate(groups)
    }
    return data, {"field": field, "groups": summary, "vocab_size": data.vocab_size}


def _tokens_fingerprint(pool: Pool, config: Config, field: str, groups: list[str]) -> dict:
    proxy = config.proxy
    settings = {
        "field": field,
        "groups": groups,
        "pool_docs": len(pool),
        "seed": config.seed,
        "tokenizer": [proxy.tokenizer, proxy.vocab_size, proxy.max_length, proxy.sample_docs],
        "cap": config.mixture.train_tokens,
        "heldout_docs": config.mixture.heldout_docs,
        "target": [config.target.paths, config.target.text_field],
    }
    return json.loads(json.dumps(settings))


def _tokenise(
    pool: Pool, config: Config, context: StageContext, groups: list[str], fingerprint: dict
) -> dict:
    """Tokenise a seeded sample of each group (at most train_tokens tokens), the held-out slice
    and the target with one BPE tokenizer trained on a sample mixed equally over the groups;
    save each as int32 .npy under OUTPUT/mixture/tokens (meta.json, written last, names them)."""
    from distsel.core.records import read_texts
    from distsel.methods.mixture.trials import eval_sequences
    from distsel.methods.proxy_model import make_tokenizer, token_stream

    began = time.perf_counter()
    store, options, proxy = context.store, config.mixture, config.proxy
    values = group_values(pool, fingerprint["field"])
    heldout = random_order(pool.random_key)[: min(options.heldout_docs, len(pool) // 2)]
    samples = [_group_sample(pool, values, g, heldout, options.train_tokens, proxy) for g in groups]
    texts = fetch_texts(store, pool, [*samples, heldout])
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


def _group_sample(
    pool: Pool, values: np.ndarray, group: str, heldout: np.ndarray, cap: int, proxy: ProxyConfig
) -> np.ndarray:
    """The group's documents in seeded random order, held-out ones left out (unless that leaves
    none), until their approximate tokens reach SAMPLE_MARGIN · cap or sample_docs documents."""
    members = np.flatnonzero(values == group)
    kept = np.setdiff1d(members, heldout)
    members = kept if len(kept) else members
    order = members[random_order(pool.random_key[members])]
    enough = np.cumsum(pool.tokens[order]) >= SAMPLE_MARGIN * cap
    count = int(np.argmax(enough)) + 1 if enough.any() else len(order)
    return order[: min(count, proxy.sample_docs)]


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
    pool: Pool, config: Config, context: StageContext, callbacks: list | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Search the group mixture (`mixture.mode`: tune or regmix) with proxies trained on
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
    data, summary = prepare_data(pool, config, context)
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
    The mixture phase (`distsel run --phase mixture`) runs only its `search`."""

    search_output = layout.MIXTURE_SEARCH

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("embed", "cluster") if group_field(config) == CLUSTER_GROUPS else ()

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        weights, section = run_mixture_search(pool, config, context)
        budget = config.select.budget
        chosen = sample_by_weights(pool, group_field(config), weights, budget, config.seed)
        section["budget"] = budget.model_dump(exclude_none=True) if budget else None
        return chosen, section

    def search(self, pool: Pool, config: Config, context: StageContext) -> dict[str, Any]:
        """The search alone (`run_mixture_search`): its manifest section."""
        return run_mixture_search(pool, config, context)[1]
