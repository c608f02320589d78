"""The algorithms layer: pure numpy/torch maths, importing nothing from distsel but
distsel.core.errors."""
