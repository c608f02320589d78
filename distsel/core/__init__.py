"""The core layer: errors, storage and the output layout, the configuration skeleton,
the executors, the Stage protocol and its runner, the registry, the pool and its samplers.
It imports no other layer."""

__version__ = "0.1.0"
