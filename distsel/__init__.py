"""distsel: distributed selection of language-model training data on Ray.

`distsel.select(data, method=..., budget=..., target=...)` selects from a Ray Dataset, paths or
dicts and returns a Ray Dataset; `distsel.run(config)` runs a configuration (distsel.api)."""

__version__ = "0.1.0"

from distsel.api import Result, run, select  # noqa: E402
from distsel.errors import DistselError  # noqa: E402

__all__ = ["DistselError", "Result", "__version__", "run", "select"]
