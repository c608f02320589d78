"""What reaches the console: distsel's own lines always; Ray's log lines, warnings and worker
output only when verbose (`distsel -v`). Ray's log files are not affected."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

_verbose = False


def configure(verbose: bool) -> None:
    """Log distsel's lines as `distsel: ...` on stderr (DEBUG when verbose, else INFO) and
    remember whether Ray may talk; the command line calls this once, first."""
    global _verbose
    _verbose = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("distsel").setLevel(logging.DEBUG if verbose else logging.INFO)


def ray_init_options() -> dict[str, Any]:
    """Options of `ray.init` for the console: Ray's defaults when verbose; else the "ray"
    logger at ERROR and no worker output relayed (failures still reach the driver as errors)."""
    if _verbose:
        return {}
    return {"logging_level": logging.ERROR, "log_to_driver": False}


def quiet_ray_data() -> None:
    """Unless verbose: Ray Data's console lines at ERROR and no progress bars or execution
    plans (distsel logs its own progress); DeprecationWarnings from Ray's modules off."""
    if _verbose:
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    import ray.data  # configures the "ray.data" logger when first imported

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
