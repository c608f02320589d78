"""Progress lines of a long call, relayed from a Ray worker to the driver's console."""

from __future__ import annotations

import logging
import uuid
from typing import Any

# A Progress file keeps the last this many lines (the driver reads it far more often).
PROGRESS_LINES_KEPT = 50
# Tells the driver's process from the workers' (each process imports this module afresh).
_PROCESS = uuid.uuid4().hex

log = logging.getLogger("distsel")


class Progress:
    """Progress lines of a long call, on the driver's console wherever the call runs.

    The call reports with `say(message, *args)` (as `log.info`). In the driver's own process (a
    LocalExecutor) that is a line on the `distsel` logger, no more. In a Ray worker, whose log
    lines stay in Ray's worker logs (distsel runs Ray with log_to_driver=False), the line is
    logged there and also written, with the lines before it, to a small JSON file at `relative`
    in `store` (atomically); the driver, waiting in `Executor.call(..., progress=...)`, reads it
    every PROGRESS_POLL_SECONDS and logs the lines it has not logged yet (`relay`), and removes
    it when the call ends (`close`). A line that cannot be written or read is skipped: progress
    never fails the work. The call decides how often it speaks (every ~10 % or ~30 s, say).

        progress = Progress(store, layout.progress("fit"))
        current().call(long_fit, data, progress, progress=progress)
    """

    def __init__(self, store: Any, relative: str) -> None:
        self.store, self.relative = store, relative
        self.token = uuid.uuid4().hex  # a file left by an earlier call is not relayed
        self.driver = _PROCESS
        self._said: list[str] = []
        self._relayed = 0

    def say(self, message: str, *args: Any) -> None:
        """Report one line (in the call)."""
        text = message % args if args else message
        log.info(text)
        if self.driver == _PROCESS:
            return
        self._said.append(text)
        written = {"token": self.token, "count": len(self._said)}
        try:
            self.store.write_json(
                self.relative, {**written, "lines": self._said[-PROGRESS_LINES_KEPT:]}
            )
        except Exception as exc:  # noqa: BLE001 - progress never fails the work
            log.debug("progress: cannot write %s (%s)", self.relative, exc)

    def relay(self) -> None:
        """On the driver: log the lines said since the last relay."""
        if self.driver != _PROCESS:
            return
        try:
            written = (
                self.store.read_json(self.relative) if self.store.exists(self.relative) else {}
            )
        except Exception as exc:  # noqa: BLE001 - progress never fails the work
            log.debug("progress: cannot read %s (%s)", self.relative, exc)
            return
        if written.get("token") != self.token or written["count"] <= self._relayed:
            return
        lines = written["lines"]
        for text in lines[max(0, len(lines) - (written["count"] - self._relayed)) :]:
            log.info(text)
        self._relayed = written["count"]

    def close(self) -> None:
        """On the driver, once the call has ended: its last lines, and the file removed."""
        self.relay()
        try:
            self.store.remove(self.relative)
        except Exception as exc:  # noqa: BLE001 - progress never fails the work
            log.debug("progress: cannot remove %s (%s)", self.relative, exc)
