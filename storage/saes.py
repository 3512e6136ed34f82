"""The `saes` table: one row per SAE the workspace knows (trained or imported).

The weights live in `saes/<sae_id>/` (sae_weights.safetensors + cfg.json); the row holds what people
query: shape, model and layer, where it came from, the weights' hash and the last `sae eval` metrics.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage.db import Database, to_json, utcnow
from storage.errors import NotFoundError


class SaeRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    sae_id: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    plm_model: str | None = None
    layer: int | None = None
    path: str
    weights_hash: str
    source: str  # "trained" or "imported:<format>"
    cfg: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    created_at: str = Field(default_factory=utcnow)


def _to_row(record: SaeRecord) -> dict[str, Any]:
    row = record.model_dump()
    row["cfg"] = to_json(record.cfg)
    row["metrics"] = to_json(record.metrics) if record.metrics is not None else None
    return row


def _from_row(row: dict[str, Any]) -> SaeRecord:
    data = dict(row)
    data["cfg"] = json.loads(data["cfg"]) if data.get("cfg") else {}
    data["metrics"] = json.loads(data["metrics"]) if data.get("metrics") else None
    return SaeRecord.model_validate(data)


# What was derived from an SAE's weights, in the order it must be deleted (predictions hang off labels).
_DERIVED = (
    ("predictions", "label_id in (select id from labels where sae_id = ?)"),
    ("labels", "sae_id = ?"),
    ("feature_concepts", "sae_id = ?"),
    ("sae_features", "sae_id = ?"),
    ("batches", "sae_id = ?"),
)


def record_sae(db: Database, record: SaeRecord) -> None:
    """Insert or replace the row of `record.sae_id`.

    When the row is replaced by other weights, everything derived from the old weights (labels with
    their predictions, feature statistics, concept scores, batches in flight) is deleted in the same
    transaction: it would otherwise be shown as describing features it never saw.
    """
    with db.transaction():
        old = db.query("select weights_hash from saes where sae_id = ?", (record.sae_id,))
        if old and old[0]["weights_hash"] != record.weights_hash:
            for table, where in _DERIVED:
                db.execute(f"delete from {table} where {where}", (record.sae_id,))
        db.table("saes").upsert(_to_row(record), pk="sae_id")


def _known_ids(db: Database) -> list[str]:
    return [row["sae_id"] for row in db.query("select sae_id from saes order by sae_id")]


def get_sae(db: Database, sae_id: str) -> SaeRecord:
    rows = db.query("select * from saes where sae_id = ?", (sae_id,))
    if rows:
        return _from_row(rows[0])
    known = _known_ids(db)
    if not known:
        raise NotFoundError(
            f"no SAE named {sae_id!r}: the workspace has no SAEs yet; "
            "run `plmlabel sae train` or `plmlabel sae import`."
        )
    raise NotFoundError(f"no SAE named {sae_id!r}; known: {', '.join(known)}.")


def list_saes(db: Database) -> list[SaeRecord]:
    return [_from_row(row) for row in db.query("select * from saes order by created_at, sae_id")]


def set_sae_metrics(db: Database, sae_id: str, metrics: dict[str, Any]) -> None:
    """Store the metrics of the last evaluation of `sae_id` (NotFoundError if unknown)."""
    get_sae(db, sae_id)
    with db.transaction():
        db.execute("update saes set metrics = ? where sae_id = ?", (to_json(metrics), sae_id))
