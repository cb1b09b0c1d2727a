"""Errors prefsweep raises for bad user input (configs, data); each message names the key, file or row."""


class ConfigError(ValueError):
    """A training config or sweep spec is invalid; the message names the key and what is wrong."""


class DataError(ValueError):
    """A dataset cannot be used; the message names the file (and row) and what is wrong."""
