"""Where a run stands, read from its output alone (`distsel status OUTPUT`).

What the pipeline leaves (distsel.app.pipeline) says how far a run got: one done marker per shard
(`_state/ingest/<shard>.json`, listing the shard's parts and its documents accepted and
rejected), per stage a fingerprint written when its scoring starts (`_fingerprint.json`) and a
done marker per part (`_state/<stage>/<part>.json`: rows, seconds, node, and the version of
the scores it marks: a part marked under another version is scored again), and at the end
`manifest.json` (or `scoring.json`, `mixture/search.json` for one phase). A stage's rate is its
parts done since its fingerprint was written over the time since; its ETA, the parts left at
that rate.

Whether a live run holds the output comes from the run record (distsel.app.run_record). Runs
started through the Python API keep no record: for those, status says so and gives the time of
the output's last write.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from distsel.app.run_record import STALE_SECONDS, liveness, read_optional_json
from distsel.core import layout
from distsel.core.console import duration, figure
from distsel.core.errors import DistselError
from distsel.core.storage import Store, is_remote, retrying

if TYPE_CHECKING:
    pass

log = logging.getLogger("distsel")

#: The results a finished run (or phase) writes last.
RESULTS = {layout.MANIFEST: "all", layout.SCORING: "score", layout.MIXTURE_SEARCH: "mixture"}


# ---------------------------------------------------------------------------------------------
# Reading an output


def collect(
    url: str, storage_options: dict[str, Any] | None = None, now: float | None = None
) -> dict[str, Any]:
    """Where the run in the output at `url` stands, as plain data (see `render`)."""
    now = time.time() if now is None else now
    store = Store(url, storage_options)
    top, state = _listing(store, ""), _listing(store, layout.STATE)
    if not state and layout.MANIFEST not in top:
        raise DistselError(f"{url}: no distsel run here (no {layout.MANIFEST} or {layout.STATE}/)")
    recorded = layout.basename(layout.RUN_RECORD) in state
    record = read_optional_json(store, layout.RUN_RECORD) if recorded else None
    results = _results(store, top)
    manifest = results.get(layout.MANIFEST, (None, {}))[1]
    finished = {name: value for name, (_, value) in results.items()}

    ingest = _ingest(store, state, record, finished)
    parts = ingest.pop("part_names")
    stages = _stages(store, state, record, finished, parts, ingest["accepted"])
    live = liveness(record, now)
    last_write = max([entry["mtime"] for entry in (*top.values(), *state.values())] or [0.0])
    _rates(stages, ingest, record, live["live"], now, last_write)
    phase, detail = _phase(record, results, ingest, stages, now)
    status = {
        "output": store.url,
        "phase": phase,
        "detail": detail,
        "run": {**_run_section(record), **live, "last_write_age_s": round(now - last_write, 1)},
        "ingest": ingest,
        "stages": stages,
        "report": layout.REPORT in top,
    }
    if live["live"]:
        status["progress"] = _progress_lines(store, state)
    if manifest and phase in ("done", "failed"):
        status["selected_docs"] = manifest.get("selected_docs")
        status["selected_tokens_approx"] = manifest.get("selected_tokens_approx")
    return status


def _listing(store: Store, folder: str) -> dict[str, dict[str, Any]]:
    """Name → {type, mtime} of what lies directly in `folder` (hidden names left out)."""
    path = store.path(folder) if folder else store.root

    def attempt() -> list[dict[str, Any]]:
        try:
            return store.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []

    entries = attempt() if store.is_local else retrying(store.url, attempt, store.retry_seconds)
    found = {}
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name and not name.startswith("."):
            found[name] = {"type": entry.get("type", "file"), "mtime": _mtime(entry)}
    return found


def _mtime(entry: dict[str, Any]) -> float:
    """A listing entry's modification time in seconds (local: mtime; S3: LastModified)."""
    value = entry.get("mtime", entry.get("LastModified", entry.get("last_modified")))
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _read_many(store: Store, folder: str, names: list[str]) -> dict[str, Any]:
    """name → parsed JSON of the files `names` in `folder`, fetched in one call."""
    if not names:
        return {}
    paths = [store.path(f"{folder}/{name}") for name in names]

    def attempt() -> dict[str, bytes]:
        return store.fs.cat(paths, on_error="omit")

    fetched = attempt() if store.is_local else retrying(store.url, attempt, store.retry_seconds)
    found = {}
    for path, data in fetched.items():
        try:
            found[path.rstrip("/").rsplit("/", 1)[-1]] = json.loads(data)
        except ValueError:
            continue
    return found


def _results(store: Store, top: dict[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
    """The finished results present: name → (mtime, content)."""
    found = {}
    for name in RESULTS:
        folder, _, base = name.rpartition("/")
        if (folder or base) not in top:
            continue
        entry = _listing(store, folder).get(base) if folder else top[base]
        value = read_optional_json(store, name) if entry else None
        if isinstance(value, dict):
            found[name] = (entry["mtime"], value)
    return found


def _ingest(
    store: Store,
    state: dict[str, Any],
    record: dict[str, Any] | None,
    finished: dict[str, Any],
) -> dict[str, Any]:
    entries = _listing(store, layout.INGEST) if layout.basename(layout.INGEST) in state else {}
    names = sorted(name for name in entries if name.endswith(layout.MARKER_SUFFIX))
    markers = _read_many(store, layout.INGEST, names)
    parts = [part for marker in markers.values() for part in marker.get("parts", [])]
    total = next(
        (len(value["shards"]) for value in finished.values() if "shards" in value), None
    ) or _count_shards(store)
    kept_input = state.get(layout.basename(layout.INPUT), {})
    started = float(record["started"]) if record else kept_input.get("mtime")
    return {
        "shards_done": len(markers),
        "shards_total": total,
        "parts": len(parts),
        "part_names": parts,
        "docs_in": sum(int(m.get("docs_in", 0)) for m in markers.values()),
        "accepted": sum(int(m.get("accepted", 0)) for m in markers.values()),
        "rejected": sum(int(m.get("rejected", 0)) for m in markers.values()),
        "mtimes": sorted(entries[name]["mtime"] for name in markers if name in entries),
        "since": started,
    }


def _count_shards(store: Store) -> int | None:
    """The number of input shards, listed from the input settings the output keeps
    (`_state/input.json`), or None where they cannot be listed from here."""
    from distsel.core import corpus
    from distsel.core.config import InputConfig

    kept = read_optional_json(store, layout.INPUT)
    if not isinstance(kept, dict):
        return None
    remote = all(is_remote(path) for path in kept.get("paths", []))
    options = store.storage_options if remote and not store.is_local else {}
    try:
        return len(corpus.list_shards(InputConfig(**kept, storage_options=options)))
    except Exception as exc:  # noqa: BLE001 - a count we cannot make is left out
        log.debug("status: cannot list the input shards (%s)", exc)
        return None


def _stages(
    store: Store,
    state: dict[str, Any],
    record: dict[str, Any] | None,
    finished: dict[str, Any],
    parts: list[str],
    rows_total: int,
) -> list[dict[str, Any]]:
    known = set(parts)
    folders = {name for name, entry in state.items() if entry["type"] == "directory"}
    found: dict[str, dict[str, Any]] = {}
    not_stages = {layout.basename(path) for path in (layout.INGEST, layout.IDS, layout.PROGRESS)}
    for name in sorted(folders - not_stages):
        entries = _listing(store, layout.state(name))
        if layout.FINGERPRINT_NAME not in entries:
            continue
        markers = {
            layout.marked_part(entry): value["mtime"]
            for entry, value in entries.items()
            if layout.marked_part(entry) in known
        }
        found[name] = {
            "name": name,
            "parts_done": len(markers),
            "parts_total": len(parts),
            "rows_scored": None,
            "rows_total": rows_total,
            "started": entries[layout.FINGERPRINT_NAME]["mtime"],
            "marker_mtimes": markers,
        }
    planned = list(record.get("stages") or []) if record else []
    if not planned and layout.basename(layout.STAGE_ORDER) in state:  # the last scoring's stages
        planned = list((read_optional_json(store, layout.STAGE_ORDER) or {}).get("stages") or [])
    order = planned + sorted(
        (name for name in found if name not in planned), key=lambda name: found[name]["started"]
    )
    stages = []
    for name in order:
        stage = found.get(name) or {
            "name": name,
            "parts_done": 0,
            "parts_total": len(parts),
            "rows_scored": 0,
            "rows_total": rows_total,
            "started": None,
            "marker_mtimes": {},
        }
        timing = next(
            (v["stages"].get(name) for v in finished.values() if name in v.get("stages", {})),
            None,
        )
        if stage["parts_done"] == stage["parts_total"] and timing and "rows" in timing:
            stage["rows_scored"] = int(timing["rows"])
        elif stage["rows_scored"] is None:
            _count_current(store, stage)
        if planned and name not in planned:
            stage["state"] = "not in this run"  # left by an earlier run of other settings
        stages.append(stage)
    return stages


def _count_current(store: Store, stage: dict[str, Any]) -> None:
    """Parts done and rows scored by the markers of the stage's current scores version (in
    place). A marker names the version of the scores it marks (the stage's settings, fit and
    inputs); those written since the stage started this run tell the current one, and a part
    whose marker has another is scored again. Until one is written, every marker counts."""
    mtimes = stage["marker_mtimes"]
    names = [layout.marker_name(part) for part in mtimes]
    markers = _read_many(store, layout.state(stage["name"]), names)
    by_part = {layout.marked_part(name): marker for name, marker in markers.items()}
    began = stage["started"] - 1
    fresh = {
        marker["version"]
        for part, marker in by_part.items()
        if "version" in marker and mtimes.get(part, 0) >= began
    }
    if len(fresh) == 1:
        (version,) = fresh
        current = {
            part: mtime
            for part, mtime in mtimes.items()
            if by_part.get(part, {}).get("version", version) == version
        }
        stage["rescoring"] = len(mtimes) - len(current)
        stage["marker_mtimes"] = mtimes = current
        stage["parts_done"] = len(current)
    stage["rows_scored"] = sum(int(by_part.get(part, {}).get("rows", 0)) for part in mtimes)


def _rates(
    stages: list[dict[str, Any]],
    ingest: dict[str, Any],
    record: dict[str, Any] | None,
    live: bool | None,
    now: float,
    last_write: float,
) -> None:
    """Each step's state, and the rate and ETA of the one under way (in place). Without a run
    record, a run counts as under way while the output was written in the last STALE_SECONDS."""
    moving = live if live is not None else now - last_write <= STALE_SECONDS
    ingest_mtimes, began = ingest.pop("mtimes"), ingest.pop("since", None)
    total, done = ingest["shards_total"], ingest["shards_done"]
    if any(stage["started"] for stage in stages) or (total is not None and done >= total):
        ingest["state"] = "done"
    else:
        ingest["state"] = "running" if moving else "stopped"
        began = began or (ingest_mtimes[0] if ingest_mtimes else None)
        if began is not None:
            fresh = [m for m in ingest_mtimes if m >= began - 1]
            _rate(ingest, fresh, began, now if moving else None, "shards")
    since_run = float(record["started"]) if record else None
    running = None if ingest["state"] == "done" else ingest
    for stage in stages:
        mtimes = sorted(stage.pop("marker_mtimes").values())
        if "state" in stage:
            continue
        if stage["parts_total"] and stage["parts_done"] >= stage["parts_total"]:
            stage["state"] = "done"
            continue
        if running is not None:
            stage["state"] = "pending"
            continue
        running = stage
        began = stage["started"]
        if began is None or (since_run is not None and began < since_run - 1):
            # no fingerprint from this run yet: the stage is fitting or loading before scoring
            stage["state"] = "preparing" if moving else "pending"
            continue
        stage["state"] = "running" if moving else "stopped"
        _rate(stage, [m for m in mtimes if m >= began - 1], began, now if moving else None)


def _rate(
    step: dict[str, Any], mtimes: list[float], began: float, now: float | None, unit: str = "parts"
) -> None:
    """Parts (or shards) per second since `began`, and the ETA of those left (while moving)."""
    end = now if now is not None else (mtimes[-1] if mtimes else began)
    elapsed = end - began
    step["done_this_run"] = len(mtimes)
    if not mtimes or elapsed <= 0:
        return
    rate = len(mtimes) / elapsed
    step["rate_per_s"] = rate
    total = step.get(f"{unit}_total")
    left = (total - step[f"{unit}_done"]) if total is not None else None
    if now is not None and left is not None:
        step["eta_s"] = round(left / rate, 1)


def _phase(
    record: dict[str, Any] | None,
    results: dict[str, tuple[float, dict[str, Any]]],
    ingest: dict[str, Any],
    stages: list[dict[str, Any]],
    now: float,
) -> tuple[str, str]:
    """ingest | scoring | selecting | mixture search | done | failed, and a few words more."""
    newest = max(results.items(), key=lambda item: item[1][0], default=None)
    if layout.MANIFEST in results:
        manifest = results[layout.MANIFEST][1]
        if manifest.get("status") == "failed" or manifest.get("failed"):
            return "failed", str(manifest.get("error", "the manifest says the run failed"))
    newer_attempt = record is not None and (
        newest is None or float(record["started"]) > newest[1][0]
    )
    finished = ""
    if newest is not None:
        name, (mtime, _) = newest
        what = {"all": "selection", "score": "scoring phase", "mixture": "mixture search"}
        finished = f"{what[RESULTS[name]]} finished {_ago(now - mtime)}; {name}"
    if newer_attempt and record["state"] == "failed":
        earlier = f" (before it: {finished})" if finished else ""
        return "failed", record.get("error", "") + earlier
    if newest is not None and not newer_attempt:
        return "done", finished
    if newer_attempt and record.get("phase") == "select":
        return "selecting", "from the finished scoring"
    if ingest["state"] != "done":
        total = ingest["shards_total"]
        return "ingest", f"{ingest['shards_done']}/{total if total is not None else '?'} shards"
    under_way = next((s for s in stages if s["state"] not in ("done", "not in this run")), None)
    if under_way is not None:
        done, total = under_way["parts_done"], under_way["parts_total"]
        return "scoring", f"{under_way['name']} {done}/{total} parts ({under_way['state']})"
    if newer_attempt and record.get("phase") == "mixture":
        return "mixture search", "every stage scored"
    if newer_attempt and record.get("phase") == "score":
        return "scoring", f"every stage scored; writing {layout.SCORING}"
    return "selecting", "every stage scored"


def _run_section(record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        return {}
    keys = ("state", "phase", "pid", "host", "started", "heartbeat", "ended", "error")
    return {key: record[key] for key in keys if key in record}


def _progress_lines(store: Store, state: dict[str, Any]) -> list[str]:
    """The last line of each long call's progress file (distsel.core.executor.Progress)."""
    if layout.basename(layout.PROGRESS) not in state:
        return []
    entries = _listing(store, layout.PROGRESS)
    files = _read_many(store, layout.PROGRESS, [n for n in entries if n.endswith(".json")])
    return [value["lines"][-1] for value in files.values() if value.get("lines")]


# ---------------------------------------------------------------------------------------------
# Text


def render(status: dict[str, Any], now: float | None = None) -> str:
    """`collect`'s answer as a few aligned lines."""
    now = time.time() if now is None else now
    lines = [f"distsel status: {status['output']}"]
    lines.append(f"  {'phase':<10}{status['phase']}" + _after(status["detail"]))
    lines.append(f"  {'run':<10}{_run_line(status['run'], now)}")
    ingest = status["ingest"]
    total = ingest["shards_total"]
    lines.append(
        f"  {'ingest':<10}{ingest['shards_done']}/{total if total is not None else '?'} shards, "
        f"{ingest['parts']:,} parts: {ingest['accepted']:,} documents accepted, "
        f"{ingest['rejected']:,} rejected" + _step_tail(ingest, "shards")
    )
    if status["stages"]:
        lines.append(f"  {'stage':<14}{'parts':>13}{'rows scored':>24}")
        for stage in status["stages"]:
            parts = f"{stage['parts_done']:,}/{stage['parts_total']:,}"
            rows = f"{stage['rows_scored']:,}/{stage['rows_total']:,}"
            lines.append(
                f"    {stage['name']:<12}{parts:>13}{rows:>24}   {stage['state']}"
                + _step_tail(stage, "parts")
            )
    for line in status.get("progress") or []:
        lines.append(f"  {'progress':<10}{line}")
    if status.get("selected_docs") is not None:
        tokens = status.get("selected_tokens_approx")
        approx = f" (~{tokens:,} tokens)" if tokens is not None else ""
        lines.append(f"  {'selected':<10}{status['selected_docs']:,} documents{approx}")
    if status["report"]:
        lines.append(f"  {'report':<10}{status['output']}/{layout.REPORT}")
    return "\n".join(lines)


def _after(detail: str) -> str:
    return f": {detail}" if detail else ""


def _step_tail(step: dict[str, Any], unit: str) -> str:
    if step.get("state") not in ("running", "stopped"):
        return ""
    if "rate_per_s" not in step:
        return ", no part done yet" if step["state"] == "running" and unit == "parts" else ""
    tail = f", {figure(step['rate_per_s'])} {unit}/s"
    if step.get("rows_scored") and step.get("parts_done"):
        rows = step["rate_per_s"] * step["rows_scored"] / step["parts_done"]
        tail += f" (~{figure(rows)} rows/s)"
    if "eta_s" in step:
        tail += f", ETA {duration(step['eta_s'])}"
    return tail


def _run_line(run: dict[str, Any], now: float) -> str:
    if run.get("live") is None:
        return f"{run['why']}; last write {_ago(run['last_write_age_s'])}"
    started = float(run.get("started", now))
    who = f"pid {run.get('pid')} on {run.get('host')} since {_clock(started)}"
    if run["live"]:
        return f"live: {who} ({duration(max(now - started, 0))}), {run['why']}"
    if run.get("state") in ("done", "failed", "interrupted"):
        ended = f" {_ago(now - float(run['ended']))}" if "ended" in run else ""
        return f"none live; the last run, {who}, ended {run['state']}{ended}"
    return f"none live; the last run, {who}, stopped: {run['why']}"


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _ago(seconds: float) -> str:
    return f"{duration(max(seconds, 0))} ago"
