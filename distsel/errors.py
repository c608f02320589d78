"""Errors that distsel reports to the user as one clear line (no traceback)."""


class DistselError(Exception):
    """A problem with the user's input, configuration or environment."""


class ConfigError(DistselError):
    """The configuration is invalid; the message names the key."""


class InputError(DistselError):
    """An input file is missing, unreadable, corrupt, or (in strict mode) holds a bad row."""
