"""distsel: distributed selection of language-model training data on Ray.

`distsel.select(data, method=..., budget=..., target=...)` selects from a Ray Dataset, paths or
dicts and returns a Ray Dataset; `distsel.run(config)` runs a configuration (distsel.app.api)."""

from distsel.app.api import Result, run, select
from distsel.core import __version__
from distsel.core.errors import DistselError

__all__ = ["DistselError", "Result", "__version__", "run", "select"]
