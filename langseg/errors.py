"""Exceptions that carry a user-facing, one-line message naming the bad file or field."""
from __future__ import annotations


class LangsegError(Exception):
    """Base class: the CLI prints the message alone, without a traceback."""


class DataError(LangsegError, ValueError):
    """A data file, row or field is not what the loader expects."""


class ConfigError(LangsegError, ValueError):
    """A model, text-encoder or config value cannot be used."""


class OutputError(LangsegError):
    """An output file or folder cannot be written (read-only, not a folder, disk full)."""
