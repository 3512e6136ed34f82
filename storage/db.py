"""The SQLite database of a workspace: schema, connection set-up and migrations.

One facade, `Database`, over `sqlite_utils.Database`. Connections use WAL (a reader never blocks the
nightly writer), foreign keys on, and a busy timeout. The schema is created by numbered migrations;
`meta.schema_version` says how far a file has come, and opening a file migrates it forward.

Large arrays never live here (they go in embeddings/ and index/); everything a person queries does.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.errors import DamagedDatabaseError, InputError, NotFoundError, PlmlabelError, ReadOnlyError

SCHEMA_VERSION = 4


def utcnow() -> str:
    """ISO-8601 UTC timestamp with seconds, the one time format stored."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _migration_1(db: sqlite_utils.Database) -> None:
    db["proteins"].create(
        {
            "accession": str,
            "entry_name": str,
            "protein_name": str,
            "organism": str,
            "taxon_id": int,
            "length": int,
            "sequence": str,
            "function": str,
            "keywords": str,  # JSON list
            "source_format": str,
            "content_hash": str,
            "imported_at": str,
            "updated_at": str,
        },
        pk="accession",
        not_null={"sequence", "length"},
    )
    db["features"].create(
        {
            "id": int,
            "accession": str,
            "type": str,
            "start": int,
            "end": int,
            "start_modifier": str,  # None (exact), "<", ">" or "?"
            "end_modifier": str,
            "description": str,
            "ligand": str,
            "evidence": str,  # JSON list of ECO codes
        },
        pk="id",
        foreign_keys=[("accession", "proteins", "accession")],
    )
    db["features"].create_index(["accession"])
    db["features"].create_index(["type"])

    db["saes"].create(
        {
            "sae_id": str,
            "architecture": str,
            "d_in": int,
            "d_sae": int,
            "k": int,
            "plm_model": str,
            "layer": int,
            "path": str,
            "weights_hash": str,
            "source": str,  # "trained" or "imported:<format>"
            "cfg": str,  # JSON
            "metrics": str,  # JSON of the last `sae eval`
            "created_at": str,
        },
        pk="sae_id",
    )
    db["sae_features"].create(
        {
            "sae_id": str,
            "feature": int,
            "max_activation": float,
            "frac_residues": float,
            "frac_proteins": float,
            "quantiles": str,  # JSON list of quantile edges
            "top_concepts": str,  # JSON list of {"concept", "f1", ...}
            "index_hash": str,
        },
        pk=("sae_id", "feature"),
        foreign_keys=[("sae_id", "saes", "sae_id")],
    )
    db["feature_concepts"].create(
        {
            "sae_id": str,
            "feature": int,
            "concept": str,
            "rank": int,
            "threshold": float,
            "f1_valid": float,
            "f1_test": float,
            "precision_test": float,
            "recall_test": float,
        },
        pk=("sae_id", "feature", "concept"),
        foreign_keys=[("sae_id", "saes", "sae_id")],
    )
    db["runs"].create(
        {
            "run_id": str,
            "sae_id": str,
            "kind": str,  # "label", "nightly", "batch"
            "backend": str,
            "model": str,
            "status": str,  # running, completed, budget_exhausted, failed, interrupted
            "args": str,  # JSON of the invocation (never keys)
            "started_at": str,
            "finished_at": str,
            "n_requested": int,
            "n_labeled": int,
            "n_failed": int,
            "n_skipped": int,
            "input_tokens": int,
            "output_tokens": int,
            "cost_usd": float,
            "message": str,
        },
        pk="run_id",
    )
    db["labels"].create(
        {
            "id": int,
            "sae_id": str,
            "feature": int,
            "status": str,  # "ok" or "failed"
            "error": str,  # the reason, when failed
            "label": str,
            "description": str,
            "concepts": str,  # JSON list
            "confidence": float,
            "pearson": float,
            "spearman": float,
            "residue_pearson": float,
            "n_heldout": int,
            "validated": int,
            "backend": str,
            "explainer_model": str,
            "simulator_model": str,
            "explain_prompt": str,
            "explain_prompt_version": str,
            "simulate_prompt": str,
            "simulate_prompt_version": str,
            "input_tokens": int,
            "output_tokens": int,
            "cost_usd": float,
            "run_id": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("sae_id", "saes", "sae_id"), ("run_id", "runs", "run_id")],
    )
    db["labels"].create_index(["sae_id", "feature"], unique=True)
    db["labels"].enable_fts(["label", "description"], create_triggers=True, tokenize="porter")
    db["predictions"].create(
        {
            "label_id": int,
            "accession": str,
            "predicted": float,
            "actual": float,  # normalised max activation, 0..1
            "actual_raw": float,
        },
        pk=("label_id", "accession"),
        foreign_keys=[("label_id", "labels", "id")],
    )
    db["batches"].create(
        {
            "batch_id": str,
            "provider": str,
            "model": str,
            "run_id": str,  # the run that submitted it
            "sae_id": str,
            "stage": str,  # "explain" or "simulate"
            "status": str,  # submitted, collected, failed
            "requests": str,  # JSON: custom_id -> feature and context needed to collect
            "n_requests": int,
            "submitted_at": str,
            "collected_at": str,
            "message": str,  # why it failed, or what collecting it gave
        },
        pk="batch_id",
    )
    db["batches"].create_index(["sae_id", "status"])


def _migration_label_trace(db: sqlite_utils.Database) -> None:
    """labels.trace (JSON: how a stage that investigates reached its label), labels.oneshot_pearson
    (the one-shot test score kept beside the final one) and labels.residue_prompt_version (the
    per-residue pass's prompt). Safe to run on a database that has them."""
    columns = {c.name for c in db["labels"].columns}
    if "residue_prompt_version" not in columns:
        db["labels"].add_column("residue_prompt_version", str)
    if "trace" not in columns:
        db["labels"].add_column("trace", str)
    if "oneshot_pearson" not in columns:
        db["labels"].add_column("oneshot_pearson", float)




def _migration_suggestions(db: sqlite_utils.Database) -> None:
    """Missing-annotation suggestions (`plmlabel suggest`); never touches the Swiss-Prot tables."""
    if db["suggestions"].exists():
        return
    db["suggestions"].create(
        {
            "sae_id": str,
            "feature": int,
            "accession": str,
            "concept": str,
            "kind": str,  # "region" or "residue"
            "residues": str,  # JSON list of [start, end] (1-based, inclusive)
            "activation": float,  # raw per-protein max
            "normalized": float,  # activation / the feature's max over the index
            "evidence": str,  # JSON: precision/recall/F1 (test), threshold, label and its score
            "rank_score": float,
            "created_at": str,
        },
        pk=("sae_id", "feature", "accession", "concept"),
        foreign_keys=[("sae_id", "saes", "sae_id")],
    )
    db["suggestions"].create_index(["sae_id", "rank_score"])
    db["suggestions"].create_index(["accession"])


def _database_folder(db: sqlite_utils.Database) -> Path | None:
    """The folder of the database file (the workspace folder); None for an in-memory database."""
    for row in db.execute("PRAGMA database_list").fetchall():
        if row[1] == "main" and row[2]:
            return Path(row[2]).parent
    return None


def _relative_in(path: str, root: Path | None) -> str | None:
    """`path` relative to `root` (with /) when it is an absolute path inside it, else None."""
    candidate = Path(path)
    if root is None or not candidate.is_absolute():
        return None
    for base in (root, root.resolve()):
        if candidate.is_relative_to(base):
            return candidate.relative_to(base).as_posix()
    return None


def _migration_relative_paths(db: sqlite_utils.Database) -> None:
    """Paths inside the workspace are stored relative to it (a copied workspace reads its own files).

    saes.path was absolute: `<workspace>/saes/<sae_id>` becomes `saes/<sae_id>` (recognised by its
    last two parts, so a workspace copied before this migration is fixed too); saes.plm_model and the
    plm_model in saes.cfg become relative when the checkpoint is inside the workspace folder. Rows
    already relative are left as they are, so running it twice changes nothing.
    """
    if not db["saes"].exists():
        return
    root = _database_folder(db)
    rows = db.execute("select sae_id, path, plm_model, cfg from saes").fetchall()
    for sae_id, path, plm_model, cfg in rows:
        changes: dict[str, Any] = {}
        if path and Path(path).is_absolute():
            if Path(path).parts[-2:] == ("saes", sae_id):
                changes["path"] = f"saes/{sae_id}"
            elif (relative := _relative_in(path, root)) is not None:
                changes["path"] = relative
        if plm_model and (relative := _relative_in(plm_model, root)) is not None:
            changes["plm_model"] = relative
            try:
                data = json.loads(cfg) if cfg else None
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("plm_model") == plm_model:
                changes["cfg"] = to_json({**data, "plm_model": relative})
        if changes:
            db["saes"].update(sae_id, changes)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1,
    _migration_suggestions,
    _migration_relative_paths,
    _migration_label_trace,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


class Database:
    """The workspace database. Use `Database.open(path)` (or `":memory:"` in tests)."""

    def __init__(self, db: sqlite_utils.Database, path: Path | None = None) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> Database:
        """Open (and migrate) the database at `path`.

        A missing or empty file is given a fresh schema only with `create=True` (`plmlabel init`);
        otherwise it is refused, as is a damaged file (DamagedDatabaseError) and a read-only one when a
        write is needed (ReadOnlyError): all before anything is written.
        """
        if str(path) == ":memory:":
            conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            path = Path(path)
            size = path.stat().st_size if path.exists() else None
            if size is None and not create:
                raise NotFoundError(f"{path} is missing; restore it from a backup, or run `plmlabel init` to "
                                    "start an empty database.")
            if size == 0 and not create:
                raise DamagedDatabaseError(f"{path} is damaged: it is empty (0 bytes); nothing was changed: "
                                           "restore it from a backup, or run `plmlabel init` to start an "
                                           "empty database.")
            if size:
                problem = header_problem(path)
                if problem:
                    raise DamagedDatabaseError(damaged_message(path, problem))
            conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            if str(path) != ":memory:":
                _quick_check(conn, Path(path))
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            database = cls(sqlite_utils.Database(conn), None if str(path) == ":memory:" else Path(path))
            database.migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            mapped = sqlite_error(exc, Path(path))
            if mapped is exc:
                raise
            raise mapped from exc
        except BaseException:
            conn.close()
            raise
        return database

    # --- schema -----------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        if not self.db["meta"].exists():
            return 0
        row = self.db.execute("select value from meta where key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise InputError(
                f"the database has schema version {version}, newer than this plmlabel ({SCHEMA_VERSION}); "
                "upgrade plmlabel."
            )
        for number in range(version, SCHEMA_VERSION):
            with self.transaction():
                MIGRATIONS[number](self.db)
                self.db["meta"].upsert({"key": "schema_version", "value": str(number + 1)}, pk="key")

    # --- helpers -----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work: committed on success, rolled back on any exception."""
        conn = self.db.conn
        if conn.in_transaction:  # nested: join the outer transaction
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def table(self, name: str) -> sqlite_utils.db.Table:
        return self.db[name]  # type: ignore[return-value]

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close()
        if isinstance(exc, sqlite3.DatabaseError) and self.path is not None:
            mapped = sqlite_error(exc, self.path)
            if mapped is not exc:  # a damaged, read-only, full or locked file: one line, exit 2
                raise mapped from exc


_HEADER = b"SQLite format 3\x00"
# Files up to this size get a full `PRAGMA quick_check` on every open (about 1.5 ms per MB); a larger one
# gets the header checks here, and damage in pages a command reads still ends as one line
# (`Database.__exit__`). `plmlabel check` always runs the full checks.
QUICK_CHECK_MAX_BYTES = 64 << 20


def header_problem(path: Path) -> str | None:
    """What is wrong with the 100-byte header of an SQLite file (or its size), None when it looks sound."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or header[:16] != _HEADER:
        return "it is not an SQLite database: bad header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header gives an impossible page size ({page_size})"
    if header[21:24] != b"\x40\x20\x20":
        return "its header is scrambled"
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        # A checkpoint cut short (kill -9) can leave page 1 ahead of the file's end; SQLite recovers it
        # from the WAL, so the size checks wait for quick_check.
        return None
    if size % page_size:
        return f"it was cut short: {size:,} bytes is not a whole number of {page_size}-byte pages"
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]
    if valid and pages and pages * page_size > size:
        return f"it is truncated: {size:,} of {pages * page_size:,} bytes"
    return None


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    if path.stat().st_size > QUICK_CHECK_MAX_BYTES:
        conn.execute("select count(*) from sqlite_master").fetchone()
        return
    rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    if rows and rows[0][0] != "ok":
        detail = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())
        raise DamagedDatabaseError(damaged_message(path, f"quick_check: {detail}"))


def damaged_message(path: Path, reason: str) -> str:
    return (f"{path} is damaged ({reason}); nothing was changed: restore it from a backup "
            "(`plmlabel check` lists the problems).")


_DAMAGE_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_INDEX", "SQLITE_CORRUPT_SEQUENCE",
                 "SQLITE_CORRUPT_VTAB", "SQLITE_IOERR_SHORT_READ"}
_READONLY_CODES = {"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_READONLY_DIRECTORY",
                   "SQLITE_READONLY_CANTINIT", "SQLITE_READONLY_RECOVERY", "SQLITE_READONLY_DBMOVED",
                   "SQLITE_READONLY_CANTLOCK", "SQLITE_PERM", "SQLITE_AUTH"}


def sqlite_error(exc: sqlite3.DatabaseError, path: Path) -> Exception:
    """The one-line PlmlabelError for an sqlite3 error on the workspace database at `path`."""
    if isinstance(exc, PlmlabelError):
        return exc
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = " ".join(str(exc).split())
    if name in _DAMAGE_CODES or "malformed" in text or "not a database" in text:
        return DamagedDatabaseError(damaged_message(path, text))
    if name in _READONLY_CODES or "readonly" in text or "unable to open" in text:
        return ReadOnlyError(f"cannot write to {path}: the workspace is read-only ({text}); nothing was "
                             "changed.")
    if name == "SQLITE_FULL":
        return InputError(f"cannot write to {path}: the disk is full; nothing was changed.")
    if name.startswith("SQLITE_BUSY") or "locked" in text:
        return InputError(f"{path} is locked by another process ({text}); try again when it is done.")
    return exc
