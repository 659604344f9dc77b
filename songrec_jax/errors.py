"""The exceptions songrec_jax raises.

Every error the library raises on purpose derives from `SongrecError`, so a
caller can catch all of them at once. The subclasses also derive from the
closest built-in exception (`ValueError`, `KeyError`, `OSError`, ...) so
code written against the built-ins keeps working.

Each message names the offending value and what would have been accepted.
"""

from __future__ import annotations

from pathlib import Path


class SongrecError(Exception):
    """Base class of every error raised on purpose by songrec_jax."""


class ConfigError(SongrecError, ValueError):
    """A configuration value is invalid or a config file cannot be read."""


class InputError(SongrecError, ValueError):
    """A function argument has the wrong shape, dtype, range or value."""


class UnknownTagError(InputError, KeyError):
    """A tag name is not in the data's tag vocabulary or has no latent mean."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0]) if self.args else ""


class DataFormatError(SongrecError, ValueError):
    """A data file is malformed.

    Attributes:
      path: the file, when known.
      line: the 1-based line number, when known.
    """

    def __init__(
        self, message: str, *, path: str | Path | None = None, line: int | None = None
    ):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path + (f", line {line}" if line is not None else "")
            where += ": "
        super().__init__(where + message)


class CheckpointError(SongrecError, OSError):
    """A checkpoint is missing, damaged, does not match, or cannot be written."""


class TrainingError(SongrecError, RuntimeError):
    """Training cannot go on, for example because the loss is not finite."""


class ResourceError(SongrecError, MemoryError):
    """The requested computation would not fit in this machine's memory."""
