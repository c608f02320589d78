"""What reaches the console: distsel's own lines always; Ray's log lines, warnings and worker
output only when verbose (`distsel -v`). Ray's log files are not affected."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_verbose = False


def configure(verbose: bool) -> None:
    """Log distsel's lines as `distsel: ...` on stderr (DEBUG when verbose, else INFO) and
    remember whether Ray may talk; the command line calls this once, first."""
    global _verbose
    _verbose = verbose
    if not verbose:
        _native_output_aside()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("distsel").setLevel(logging.DEBUG if verbose else logging.INFO)


def _native_output_aside() -> None:
    """Ray's C++ core writes some lines (such as the one on actor constructor arguments,
    ray-project/ray#53727) to file descriptor 2 itself, where no Python setting reaches them.
    Python's own output keeps the console: sys.stderr moves to a copy of that descriptor. What
    native code writes to descriptor 2 goes to a file in the temporary folder, removed at a
    normal exit (a crash of native code leaves it for inspection; `distsel -v` shows it all)."""
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    aside = Path(tempfile.gettempdir()) / f"distsel-native-{os.getpid()}.log"
    sys.stderr.flush()
    descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    sys.stderr = console
    atexit.register(aside.unlink, missing_ok=True)


def ray_init_options() -> dict[str, Any]:
    """Options of `ray.init` for the console: Ray's defaults when verbose; else the "ray"
    logger at ERROR and no worker output relayed (failures still reach the driver as errors)."""
    if _verbose:
        return {}
    return {"logging_level": logging.ERROR, "log_to_driver": False}


def is_verbose() -> bool:
    return _verbose


def figure(value: float) -> str:
    """A rate or count for a progress line: two significant digits below 100."""
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def duration(seconds: float) -> str:
    """Seconds as `12 s`, `25 min` or `1.7 h`."""
    if seconds < 100:
        return f"{figure(seconds)} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
