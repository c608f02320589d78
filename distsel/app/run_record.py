"""The run record that `distsel run` keeps in its output while it runs, `_state/run.json`:
pid, host, start, phase and planned stages, a heartbeat every HEARTBEAT_SECONDS, and at the end
`done`, `failed` (with the error line) or `interrupted`. A run counts as live while its state is
`running`, its heartbeat is younger than STALE_SECONDS and (on the same host) its process
exists. Runs started through the Python API keep no record.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distsel.core import __version__, errors, layout
from distsel.core.console import duration
from distsel.core.storage import Store

if TYPE_CHECKING:
    from distsel.core.config import Config

log = logging.getLogger("distsel")

HEARTBEAT_SECONDS = 20.0
#: A running record whose heartbeat is older than this is a run that was killed or lost.
STALE_SECONDS = 3 * HEARTBEAT_SECONDS


class RunRecord:
    """`_state/run.json` of one run: written when the run starts, refreshed by a heartbeat
    thread, closed by `end`. Never fails the run: a record that cannot be written is skipped
    (the run's own first write names an unwritable output)."""

    def __init__(self, store: Store, record: dict[str, Any]) -> None:
        self.store, self.record = store, record
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="distsel-heartbeat", daemon=True)

    @classmethod
    def start(cls, config: Config, phase: str, stages: list[str]) -> RunRecord:
        """Record a run of `phase` on `config.output` as running (warning when the record
        there is of another live run) and start its heartbeat."""
        output = config.output
        store = Store(output.path, output.storage_options, retry_seconds=0)
        try:
            previous = read_optional_json(store, layout.RUN_RECORD)
        except Exception:  # noqa: BLE001 - the run's own first write names the problem
            previous = None
        if previous and liveness(previous, time.time())["live"]:
            log.warning(
                "%s is in use by another live run (pid %s on %s); both do the same work",
                output.path,
                previous.get("pid"),
                previous.get("host"),
            )
        now = time.time()
        record = {
            "state": "running",
            "phase": phase,
            "stages": stages,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now,
            "heartbeat": now,
            "distsel": __version__,
        }
        run = cls(store, record)
        run._write()
        run._thread.start()
        return run

    def end(self, exc: BaseException | None) -> None:
        """Stop the heartbeat and record how the run ended: done, interrupted, or failed with
        `exc`'s one-line message (without credentials)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        state = "done" if exc is None else "failed"
        update: dict[str, Any] = {"state": state, "ended": time.time()}
        if isinstance(exc, KeyboardInterrupt):
            update["state"] = "interrupted"
        elif exc is not None:
            known = errors.user_error(exc)
            message = str(known) if known else errors.short(errors.innermost(exc))
            update["error"] = errors.strip_credentials(" ".join(message.split()))
        self.record.update(update)
        self._write()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.record["heartbeat"] = time.time()
            self._write()

    def _write(self) -> None:
        with self._lock:
            try:
                self.store.write_json(layout.RUN_RECORD, self.record)
            except Exception as exc:  # noqa: BLE001 - the record never fails the run
                log.debug("run record: cannot write %s (%s)", layout.RUN_RECORD, exc)


def keeping_record(
    config: Config, phase: str, stages: list[str], action: Callable[[Callable[[], None]], Any]
) -> Any:
    """`action(begin)`, with the run record of `config`'s output kept around it from the moment
    the action calls `begin()` (once its inputs are found and the output is writable: a run
    that fails before leaves nothing in the output)."""
    records: list[RunRecord] = []

    def begin() -> None:
        if not records:
            records.append(RunRecord.start(config, phase, stages))

    try:
        result = action(begin)
    except BaseException as exc:
        for record in records:
            record.end(exc)
        raise
    for record in records:
        record.end(None)
    return result


def planned_stages(config: Config) -> list[str]:
    """The stages a run of `config` scores, in order (as distsel.core.runner builds them)."""
    from distsel.core.runner import stage_names

    return stage_names(config)


def liveness(record: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """Whether the run of `record` is live: `live` True, False, or None (no record)."""
    if record is None:
        return {"live": None, "why": "no run record (a run through the Python API keeps none)"}
    state = record.get("state")
    if state != "running":
        return {"live": False, "why": f"the last run ended: {state}"}
    age = now - float(record.get("heartbeat", 0))
    if record.get("host") == socket.gethostname() and not _process_exists(record.get("pid")):
        return {"live": False, "why": f"its process {record.get('pid')} is gone (killed?)"}
    if age > STALE_SECONDS:
        return {"live": False, "why": f"no heartbeat for {duration(age)} (killed or lost?)"}
    return {"live": True, "why": f"heartbeat {duration(max(age, 0))} ago"}


def _process_exists(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OSError):
        return True  # someone else's process, or nothing to tell by: go by the heartbeat
    return True


def read_optional_json(store: Store, relative: str) -> Any:
    """The JSON file at `relative`, or None when it is missing or unreadable."""
    try:
        return store.read_json(relative)
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as exc:
        log.debug("cannot read %s (%s)", relative, exc)
        return None
