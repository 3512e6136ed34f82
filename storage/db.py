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

from storage.errors import InputError

SCHEMA_VERSION = 2


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


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_label_trace]
assert len(MIGRATIONS) == SCHEMA_VERSION


class Database:
    """The workspace database. Use `Database.open(path)` (or `":memory:"` in tests)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    @classmethod
    def open(cls, path: str | Path) -> Database:
        if str(path) == ":memory:":
            conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            path = Path(path)
            if path.exists() and path.stat().st_size and not _is_sqlite(path):
                raise InputError(f"{path} is not an SQLite database.")
            conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        if str(path) != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        database = cls(sqlite_utils.Database(conn))
        database.migrate()
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

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"
