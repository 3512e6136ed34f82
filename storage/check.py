"""`plmlabel check`, the database half: is plmlabel.db sound, and do its rows hang together?

Everything here reads only: the file is opened read-only (`mode=ro`), so a damaged database can be
examined without being touched. Each problem is one `Problem` with the fix a person can apply.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from storage.db import SCHEMA_VERSION, header_problem

_RESTORE = "restore plmlabel.db from a backup (or move it aside and run `plmlabel init`, losing its rows)"


class Problem(BaseModel):
    """One thing wrong in a workspace: where, what, and how to fix it."""

    where: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.where}: {self.problem}; fix: {self.fix}."


# Rows that must point at a row of another table: (table, column, parent table, parent column, fix)
_SHOWN = 5  # integrity_check lines reported one by one; the rest are counted
_IMPORT = "re-import the proteins with `plmlabel swissprot import`"
_RELABEL = "relabel the features with `plmlabel label --force`"
_SAE = "re-import or retrain the SAE, then run `plmlabel index` again"
_REFERENCES = (
    ("features", "accession", "proteins", "accession", _IMPORT),
    ("sae_features", "sae_id", "saes", "sae_id", _SAE),
    ("feature_concepts", "sae_id", "saes", "sae_id", _SAE),
    ("labels", "sae_id", "saes", "sae_id", _SAE),
    ("labels", "run_id", "runs", "run_id", _RELABEL),
    ("predictions", "label_id", "labels", "id", _RELABEL),
    ("predictions", "accession", "proteins", "accession", _IMPORT),
)


def read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing, not even -wal/-shm files (immutable when no WAL is pending)."""
    pending = Path(f"{path}-wal").exists()
    mode = "mode=ro" if pending else "mode=ro&immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)


def check_database(path: Path) -> list[Problem]:
    """The problems of the database file at `path` (an empty list when it is sound)."""
    where = str(path)
    if not path.exists():
        return [Problem(where=where, problem="the database is missing", fix="run `plmlabel init`")]
    if path.stat().st_size == 0:
        return [Problem(where=where, problem="the database is empty (0 bytes)", fix=_RESTORE)]
    damaged = header_problem(path)
    if damaged:
        return [Problem(where=where, problem=f"the database is damaged: {damaged}", fix=_RESTORE)]
    try:
        conn = read_only_connection(path)
    except sqlite3.DatabaseError as exc:
        return [Problem(where=where, problem=f"cannot open the database: {exc}", fix=_RESTORE)]
    try:
        return _check_open(conn, where)
    except sqlite3.DatabaseError as exc:
        return [Problem(where=where, problem=f"the database is damaged: {_one_line(str(exc))}",
                        fix=_RESTORE)]
    finally:
        conn.close()


def _check_open(conn: sqlite3.Connection, where: str) -> list[Problem]:
    found = [line.strip() for (message,) in conn.execute("PRAGMA integrity_check(100)") if message != "ok"
             for line in str(message).splitlines() if line.strip() and not line.startswith("***")]
    problems = [Problem(where=where, problem=f"integrity_check: {_one_line(line)}", fix=_RESTORE)
                for line in found[:_SHOWN]]
    if len(found) > _SHOWN:
        problems.append(Problem(where=where, problem=f"integrity_check: {len(found) - _SHOWN} more problems "
                                "like these", fix=_RESTORE))
    if problems:
        return problems  # the rows of a damaged file are not worth checking further
    tables = {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}
    version = 0
    if "meta" in tables:
        row = conn.execute("select value from meta where key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
    if version != SCHEMA_VERSION:
        fix = "upgrade plmlabel" if version > SCHEMA_VERSION else "run any plmlabel command to migrate it"
        problems.append(Problem(where=where, problem=f"schema version {version}, this plmlabel has "
                                f"{SCHEMA_VERSION}", fix=fix))
        if version > SCHEMA_VERSION or version == 0:
            return problems
    fk_rows = conn.execute("PRAGMA foreign_key_check")
    broken = Counter((table, parent) for table, _rowid, parent, _fk in fk_rows)
    for table, column, parent, parent_column, fix in _REFERENCES:
        if table not in tables or parent not in tables:
            continue
        (count,) = conn.execute(
            f"select count(*) from {table} where {column} is not null and {column} not in "
            f"(select {parent_column} from {parent})").fetchone()
        if count:
            broken.pop((table, parent), None)
            problems.append(Problem(where=f"{where} table {table}",
                                    problem=f"{count:,} orphan rows: {column} names no row of {parent}",
                                    fix=fix))
    for (table, parent), count in broken.items():
        problems.append(Problem(where=f"{where} table {table}",
                                problem=f"{count:,} rows break their foreign key to {parent}", fix=_RESTORE))
    if "labels_fts" in tables and "labels" in tables:
        (labels,) = conn.execute("select count(*) from labels").fetchone()
        (indexed,) = conn.execute("select count(*) from labels_fts").fetchone()
        if labels != indexed:
            problems.append(Problem(
                where=f"{where} table labels_fts",
                problem=f"the label search index holds {indexed:,} rows for {labels:,} labels",
                fix="rebuild it with sqlite3 plmlabel.db "
                    "\"insert into labels_fts(labels_fts) values('rebuild')\""))
    return problems


def _one_line(message: str) -> str:
    return " ".join(message.replace("*** in database main ***", "").split())
