"""The workspace database opened read-only, one connection per request.

SQLite's `mode=ro` plus `PRAGMA query_only` make every write fail, so serve can never change the
database; in WAL mode a reader sees the last committed state while a labeling job writes (the reader
never blocks the writer, and the writer never blocks the reader). A connection per request costs about
a tenth of a millisecond and keeps threads from sharing one.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import sqlite_utils

from storage.db import SCHEMA_VERSION, Database, sqlite_error
from storage.errors import InputError, NotFoundError


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to `path` (which must exist)."""
    if not path.is_file():
        raise NotFoundError(f"{path} is missing; run `plmlabel init` and import proteins first.")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
    try:
        conn.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
        # A WAL database in a folder nobody may write: SQLite cannot make its -shm file, and no job can
        # write the database either, so it is read as the immutable file it is.
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def check_schema(path: Path) -> None:
    """Refuse a database whose schema this plmlabel does not read (serve never migrates)."""
    with read_only_database(path) as db:
        version = db.schema_version
    if version != SCHEMA_VERSION:
        raise InputError(f"{path} has schema version {version}, this plmlabel reads {SCHEMA_VERSION}; run "
                         "`plmlabel query` once to migrate it (serve never writes).")


@contextmanager
def read_only_database(path: Path) -> Iterator[Database]:
    """A `Database` over a read-only connection, closed at the end of the block."""
    conn = connect_read_only(path)
    try:
        yield Database(sqlite_utils.Database(conn), path)
    except sqlite3.DatabaseError as exc:
        mapped = sqlite_error(exc, path)
        if mapped is exc:
            raise
        raise mapped from exc
    finally:
        conn.close()
