"""The methods layer: one module per method (its options, its stages, its selector),
found by the registry (distsel.core.registry). It imports core and algorithms only."""
