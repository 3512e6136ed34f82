"""The exception tree of plmlabel.

    PlmlabelError            anything the user can cause; the CLI prints its message as one line
    ├── InputError           a bad file, bad sequence, bad id or bad argument (exit code 2)
    │   ├── ParseError       a record that cannot be parsed; names the file and the record/line
    │   ├── DamagedDatabaseError  plmlabel.db is missing, empty, truncated or corrupt (nothing written)
    │   └── ReadOnlyError    the workspace cannot be written (nothing written)
    ├── NotFoundError        something named that is not there: an SAE, an index, weights (exit code 2)
    ├── ConfigError          a missing API key, a bad plmlabel.toml (exit code 2)
    ├── LockedError          another job holds the workspace lock (exit code 4)
    └── JobFailedError       a job ran but ended with failures (exit code 1)

Every layer raises these; only the CLI turns them into messages and exit codes.
"""

from __future__ import annotations


class PlmlabelError(Exception):
    """Base class: a failure the user can act on. Its message is one sentence."""

    exit_code = 2


class InputError(PlmlabelError):
    """Bad input from the user: a file, a sequence, an id, an argument."""


class ParseError(InputError):
    """A record that cannot be parsed."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 record: str | None = None) -> None:
        where = []
        if path:
            where.append(str(path))
        if record:
            where.append(f"record {record}")
        if line is not None:
            where.append(f"line {line}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.line = line
        self.record = record
        self.reason = message


class DamagedDatabaseError(InputError):
    """The workspace database is damaged (or missing/empty where one must exist)."""


class ReadOnlyError(InputError):
    """A write to the workspace was refused by the file system."""


class NotFoundError(PlmlabelError):
    """Something the user named does not exist."""


class ConfigError(PlmlabelError):
    """Configuration is missing or invalid (including a missing API key)."""


class LockedError(PlmlabelError):
    """Another job holds the workspace lock."""

    exit_code = 4


class JobFailedError(PlmlabelError):
    """A job ran to its end but some of its work failed."""

    exit_code = 1
