"""Errors users see. Each names the place (file, line, field) so bad input can be fixed."""
from __future__ import annotations


class EmbedlakeError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero (no traceback)."""

    exit_code = 2


class InputError(EmbedlakeError):
    """Bad user input: a file, a line in it, or a field of it."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = str(path) if path is not None else ""
        for part in ([f"line {line}"] if line is not None else []) + ([f"field {field!r}"] if field is not None else []):
            where = f"{where}: {part}" if where and "line" not in where else (f"{where}, {part}" if where else part)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(EmbedlakeError):
    """A config file or override that does not validate against the schema."""


class LakeError(EmbedlakeError):
    """The lake refused an operation: missing run, commit conflict, bad name."""


class CommitConflict(LakeError):
    """Another writer committed the same manifest first (put-if-absent lost the race)."""
