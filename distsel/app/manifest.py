"""The manifest of a selection: what went in and came out, the configuration with its
credentials hidden, the seed, the package versions and each step's timings."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import numpy as np

from distsel.core import errors, records
from distsel.core.config import Config
from distsel.core.pool import Pool

SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session")


def build_manifest(
    config: Config,
    ingested: list[records.IngestResult],
    pool: Pool,
    chosen: np.ndarray,
    timings: dict[str, Any],
    section: dict[str, Any],
) -> dict[str, Any]:
    """manifest.json of a selection, before the driver adds the evaluation."""
    manifest = {
        **counts(ingested),
        "selected_docs": int(len(chosen)),
        "pool_tokens_approx": pool.totals.tokens,
        "selected_tokens_approx": int(pool.tokens[chosen].sum()),
        "by_group": pool.counts(config.input.group_field, chosen),
        "config": redact(config.model_dump(mode="json")),
        "seed": config.seed,
        "versions": versions(),
        "stages": timings,
    }
    manifest[config.select.method] = section
    return manifest


def counts(ingested: list[records.IngestResult]) -> dict[str, Any]:
    """Documents in, accepted and rejected (by reason), in all and per shard."""
    reasons: dict[str, int] = {}
    for result in ingested:
        for reason, count in result.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    found = {
        "input_docs": sum(r.docs_in for r in ingested),
        "accepted_docs": sum(r.accepted for r in ingested),
        "rejected_docs": sum(r.rejected for r in ingested),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "shards": [
            {"shard": r.shard, "docs_in": r.docs_in, "accepted": r.accepted, "rejected": r.rejected}
            for r in ingested
        ],
    }
    if found["input_docs"] != found["accepted_docs"] + found["rejected_docs"]:
        raise AssertionError("documents in != accepted + rejected")
    return found


def credentials(config: Config) -> list[str]:
    """The credential-like strings of the configuration: those that redact hides."""
    return _secret_values(config.model_dump(mode="json"))


def _secret_values(value: Any, inside_storage_options: bool = False) -> list[str]:
    if isinstance(value, str):
        return errors.userinfo(value)
    if isinstance(value, list):
        return [found for item in value for found in _secret_values(item, inside_storage_options)]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        if inside_storage_options and isinstance(item, str) and _names_a_secret(key):
            found.append(item)
        else:
            found += _secret_values(item, inside_storage_options or key == "storage_options")
    return found


def redact(value: Any, inside_storage_options: bool = False) -> Any:
    """Hide credential-like values: in storage options those under keys naming a secret, key
    or token; anywhere, the user information of a URL (http://user:pass@host → ***@host)."""
    if isinstance(value, str):
        return errors.USERINFO.sub("***@", value)
    if isinstance(value, dict):
        return {key: _redact_item(key, item, inside_storage_options) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, inside_storage_options) for item in value]
    return value


def _redact_item(key: str, item: Any, inside_storage_options: bool) -> Any:
    if inside_storage_options and item and _names_a_secret(key):
        return "***"
    return redact(item, inside_storage_options or key == "storage_options")


def _names_a_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("distsel", "ray", "pyarrow", "torch", "transformers", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
