"""The label store: one label per (SAE, feature) with its held-out predictions; the runs table; the
provider batches a batch job has in flight.

A label and its predictions are written in one transaction. An ok label replaces whatever was
stored for its feature (relabeling); a failure is stored only where no ok label exists, so a failed
attempt never overwrites a good label. Labels are searchable through the labels_fts index, which
triggers keep in step.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from storage.db import Database, to_json, utcnow

LabelStatus = Literal["ok", "failed"]
RunStatus = Literal["running", "completed", "budget_exhausted", "failed", "interrupted"]
BatchStatus = Literal["submitted", "collected", "failed"]


class PredictionRow(BaseModel):
    """One held-out protein: what the simulator predicted (0-10) and the real max activation."""

    accession: str
    predicted: float
    actual: float | None = None  # normalised by the feature's max, 0..1
    actual_raw: float | None = None


class LabelRecord(BaseModel):
    """A row of `labels`. Token counts include cached input tokens; cost is None for unpriced models."""

    sae_id: str
    feature: int
    status: LabelStatus = "ok"
    error: str | None = None
    label: str | None = None
    description: str | None = None
    concepts: list[str] = Field(default_factory=list)
    confidence: float | None = None
    pearson: float | None = None
    spearman: float | None = None
    residue_pearson: float | None = None
    n_heldout: int | None = None
    validated: bool = False
    backend: str | None = None
    explainer_model: str | None = None
    simulator_model: str | None = None
    explain_prompt: str | None = None
    explain_prompt_version: str | None = None
    simulate_prompt: str | None = None
    simulate_prompt_version: str | None = None
    residue_prompt_version: str | None = None  # set when the per-residue pass ran
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    run_id: str | None = None
    trace: str | None = None  # JSON, from a stage that investigates (the agent loop)
    oneshot_pearson: float | None = None  # the one-shot test score, beside an agent's final one
    created_at: str = Field(default_factory=utcnow)


class StoredLabel(LabelRecord):
    id: int
    predictions: list[PredictionRow] = Field(default_factory=list)


class LabelState(BaseModel):
    """What a job needs to decide whether a feature is done, failed or stale."""

    feature: int
    status: LabelStatus
    backend: str | None
    explainer_model: str | None
    simulator_model: str | None
    explain_prompt_version: str | None
    simulate_prompt_version: str | None


_COLUMNS = [name for name in LabelRecord.model_fields]


def _row_values(record: LabelRecord) -> dict[str, Any]:
    values = record.model_dump()
    values["concepts"] = json.dumps(record.concepts)
    values["validated"] = int(record.validated)
    return values


def _upsert_sql(only_over_failed: bool) -> str:
    cols = ", ".join(f'"{c}"' for c in _COLUMNS)
    params = ", ".join(f":{c}" for c in _COLUMNS)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in _COLUMNS if c not in ("sae_id", "feature"))
    guard = " WHERE labels.status != 'ok'" if only_over_failed else ""
    return (
        f"INSERT INTO labels ({cols}) VALUES ({params}) "
        f"ON CONFLICT(sae_id, feature) DO UPDATE SET {updates}{guard}"
    )


def save_label(db: Database, record: LabelRecord, predictions: list[PredictionRow]) -> int:
    """Store an ok label and its predictions atomically, replacing any earlier label of the feature."""
    if record.status != "ok":
        raise ValueError("save_label stores ok labels; use save_failure for failures")
    with db.transaction():
        db.execute(_upsert_sql(only_over_failed=False), _row_values(record))
        label_id = db.execute(
            "SELECT id FROM labels WHERE sae_id = ? AND feature = ?", (record.sae_id, record.feature)
        ).fetchone()[0]
        db.execute("DELETE FROM predictions WHERE label_id = ?", (label_id,))
        db.db.conn.executemany(
            "INSERT INTO predictions (label_id, accession, predicted, actual, actual_raw) "
            "VALUES (?, ?, ?, ?, ?)",
            [(label_id, p.accession, p.predicted, p.actual, p.actual_raw) for p in predictions],
        )
    return int(label_id)


def save_failure(db: Database, record: LabelRecord) -> bool:
    """Record a failed attempt unless the feature already has an ok label. Returns whether it was stored."""
    if record.status != "failed" or not record.error:
        raise ValueError("save_failure needs status 'failed' and an error reason")
    with db.transaction():
        cursor = db.execute(_upsert_sql(only_over_failed=True), _row_values(record))
        return cursor.rowcount > 0


def _stored(row: dict[str, Any], predictions: list[PredictionRow]) -> StoredLabel:
    row = dict(row)
    row["concepts"] = json.loads(row["concepts"]) if row.get("concepts") else []
    row["validated"] = bool(row.get("validated"))
    return StoredLabel(**row, predictions=predictions)


def _predictions(db: Database, label_id: int) -> list[PredictionRow]:
    rows = db.query(
        "SELECT accession, predicted, actual, actual_raw FROM predictions WHERE label_id = ? "
        "ORDER BY accession",
        (label_id,),
    )
    return [PredictionRow(**r) for r in rows]


def get_label(
    db: Database, sae_id: str, feature: int, *, with_predictions: bool = True
) -> StoredLabel | None:
    rows = db.query("SELECT * FROM labels WHERE sae_id = ? AND feature = ?", (sae_id, int(feature)))
    if not rows:
        return None
    row = rows[0]
    return _stored(row, _predictions(db, row["id"]) if with_predictions else [])


def list_labels(
    db: Database,
    sae_id: str | None = None,
    *,
    status: LabelStatus | None = None,
    validated: bool | None = None,
    with_predictions: bool = False,
) -> list[StoredLabel]:
    """Labels filtered by SAE, status and validation, ordered by SAE and feature."""
    where, params = [], []
    if sae_id is not None:
        where.append("sae_id = ?")
        params.append(sae_id)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if validated is not None:
        where.append("validated = ?")
        params.append(int(validated))
    sql = "SELECT * FROM labels" + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.query(sql + " ORDER BY sae_id, feature", tuple(params))
    return [_stored(r, _predictions(db, r["id"]) if with_predictions else []) for r in rows]


def label_states(db: Database, sae_id: str) -> dict[int, LabelState]:
    rows = db.query(
        "SELECT feature, status, backend, explainer_model, simulator_model, explain_prompt_version, "
        "simulate_prompt_version FROM labels WHERE sae_id = ?",
        (sae_id,),
    )
    return {r["feature"]: LabelState(**r) for r in rows}


def labeled_features(db: Database, sae_id: str) -> set[int]:
    """Features with an ok label."""
    return {f for f, s in label_states(db, sae_id).items() if s.status == "ok"}


def failed_features(db: Database, sae_id: str) -> set[int]:
    """Features whose only stored attempt failed."""
    return {f for f, s in label_states(db, sae_id).items() if s.status == "failed"}


def stale_features(
    db: Database,
    sae_id: str,
    *,
    explain_prompt_version: str | None,
    simulate_prompt_version: str | None,
    model: str | None = None,
) -> set[int]:
    """Ok labels made with another prompt version (or, when `model` is given, another explainer or
    simulator model)."""
    stale = set()
    for feature, state in label_states(db, sae_id).items():
        if state.status != "ok":
            continue
        if (state.explain_prompt_version != explain_prompt_version
                or state.simulate_prompt_version != simulate_prompt_version
                or (model is not None and model != state.explainer_model)
                or (model is not None and model != state.simulator_model)):
            stale.add(feature)
    return stale


# --- runs ---------------------------------------------------------------------------------------------
class RunRecord(BaseModel):
    run_id: str
    sae_id: str | None = None
    kind: str = "label"
    backend: str | None = None
    model: str | None = None
    status: RunStatus = "running"
    args: dict[str, Any] = Field(default_factory=dict)
    started_at: str = Field(default_factory=utcnow)
    finished_at: str | None = None
    n_requested: int = 0
    n_labeled: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    message: str | None = None


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def start_run(db: Database, run: RunRecord) -> str:
    """Insert a run row (status running). `args` must hold no secrets: it is stored as given."""
    values = run.model_dump()
    values["args"] = to_json(run.args)
    with db.transaction():
        db.table("runs").insert(values)
    return run.run_id


def finish_run(
    db: Database,
    run_id: str,
    *,
    status: RunStatus,
    n_labeled: int,
    n_failed: int,
    n_skipped: int,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float | None,
    message: str | None = None,
) -> None:
    with db.transaction():
        db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, n_labeled = ?, n_failed = ?, n_skipped = ?, "
            "input_tokens = ?, output_tokens = ?, cost_usd = ?, message = ? WHERE run_id = ?",
            (status, utcnow(), n_labeled, n_failed, n_skipped, input_tokens, output_tokens, cost_usd,
             message, run_id),
        )


def get_run(db: Database, run_id: str) -> RunRecord | None:
    rows = db.query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
    return _run(rows[0]) if rows else None


def list_runs(db: Database, sae_id: str | None = None) -> list[RunRecord]:
    if sae_id is None:
        rows = db.query("SELECT * FROM runs ORDER BY started_at, rowid")
    else:
        rows = db.query("SELECT * FROM runs WHERE sae_id = ? ORDER BY started_at, rowid", (sae_id,))
    return [_run(r) for r in rows]


def _run(row: dict[str, Any]) -> RunRecord:
    row = dict(row)
    row["args"] = json.loads(row["args"]) if row.get("args") else {}
    return RunRecord(**{k: v for k, v in row.items() if v is not None or k in ("cost_usd",)})


def mark_interrupted_runs(db: Database) -> list[str]:
    """Mark runs still 'running' as 'interrupted'; returns their ids.

    Call it only while holding the workspace lock: then no job is running, and a 'running' row was
    left by a job that was killed before it could finish its row.
    """
    note = "the job ended without finishing its run (killed?); marked interrupted when the next job started"
    with db.transaction():
        ids = [r["run_id"] for r in db.query("SELECT run_id FROM runs WHERE status = 'running'")]
        db.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = COALESCE(finished_at, ?), "
            "message = CASE WHEN message IS NULL OR message = '' THEN ? ELSE message || '; ' || ? END "
            "WHERE status = 'running'",
            (utcnow(), note, note),
        )
    return ids


# --- provider batches ----------------------------------------------------------------------------------
class BatchRow(BaseModel):
    """A provider batch of one stage. `requests` maps each custom_id to what collecting it needs."""

    batch_id: str
    provider: str
    model: str | None = None
    run_id: str | None = None
    sae_id: str
    stage: str
    status: BatchStatus = "submitted"
    requests: dict[str, dict[str, Any]] = Field(default_factory=dict)
    submitted_at: str = Field(default_factory=utcnow)
    collected_at: str | None = None
    message: str | None = None

    @property
    def features(self) -> set[int]:
        return {int(r["feature"]) for r in self.requests.values()}


def record_batch(db: Database, row: BatchRow) -> None:
    values = row.model_dump()
    values["requests"] = to_json(row.requests)
    values["n_requests"] = len(row.requests)
    with db.transaction():
        db.table("batches").insert(values)


def close_batch(db: Database, batch_id: str, *, status: BatchStatus, message: str | None = None) -> None:
    """A batch collected (or given up): it is no longer in flight."""
    with db.transaction():
        db.execute("UPDATE batches SET status = ?, collected_at = ?, message = ? WHERE batch_id = ?",
                   (status, utcnow(), message, batch_id))


def open_batches(db: Database, sae_id: str, provider: str | None = None) -> list[BatchRow]:
    """Batches of the SAE still in flight (submitted, not collected), oldest first."""
    sql = "SELECT * FROM batches WHERE sae_id = ? AND status = 'submitted'"
    params: tuple[Any, ...] = (sae_id,)
    if provider is not None:
        sql += " AND provider = ?"
        params += (provider,)
    rows = db.query(sql + " ORDER BY submitted_at, rowid", params)
    return [_batch(r) for r in rows]


def list_batches(db: Database, sae_id: str | None = None) -> list[BatchRow]:
    if sae_id is None:
        rows = db.query("SELECT * FROM batches ORDER BY submitted_at, rowid")
    else:
        rows = db.query("SELECT * FROM batches WHERE sae_id = ? ORDER BY submitted_at, rowid", (sae_id,))
    return [_batch(r) for r in rows]


def in_flight_features(db: Database, sae_id: str, stage: str | None = None) -> set[int]:
    """Features with a request in a batch not yet collected (of one stage, or any)."""
    return {f for b in open_batches(db, sae_id) if stage is None or b.stage == stage for f in b.features}


def _batch(row: dict[str, Any]) -> BatchRow:
    row = dict(row)
    row["requests"] = json.loads(row["requests"]) if row.get("requests") else {}
    row.pop("n_requests", None)
    return BatchRow(**row)
