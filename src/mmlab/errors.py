"""Errors a user can cause and fix. The CLI prints these as one line, without a traceback."""


class MMLabError(Exception):
    """Base class for errors caused by bad input (a config, a file, a flag), not by a bug."""


class ConfigError(MMLabError, ValueError):
    """A configuration value is invalid; the message names the field and why."""
