"""distsel: distributed selection of language-model training data on Ray."""

__version__ = "0.1.0"
