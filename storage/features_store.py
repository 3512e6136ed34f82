"""The `sae_features` and `feature_concepts` tables: what people query about one SAE feature.

`sae_features` holds the statistics the activation index computed (one row per feature, stamped with
the index's hash) and, once `plmlabel concepts` ran, the feature's top Swiss-Prot concepts as JSON.
`feature_concepts` holds the same concept associations one row per (feature, concept), so they can be
filtered and joined in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from storage.db import Database, to_json


class FeatureStats(BaseModel):
    """Per-feature statistics over the indexed proteins (raw activation units)."""

    model_config = ConfigDict(frozen=True)

    sae_id: str
    feature: int
    max_activation: float
    frac_residues: float  # fraction of indexed residues where the feature is > 0
    frac_proteins: float  # fraction of indexed proteins where it is > 0 somewhere
    quantiles: tuple[float, ...] = ()  # edges of the non-zero per-protein maxima (see the index)
    index_hash: str | None = None
    top_concepts: tuple[dict[str, Any], ...] = ()


class FeatureConcept(BaseModel):
    """One Swiss-Prot concept associated with a feature: threshold chosen on valid, scored on test."""

    model_config = ConfigDict(frozen=True)

    feature: int
    concept: str
    rank: int  # 1 = the feature's best concept
    threshold: float  # on the normalised activation
    f1_valid: float
    f1_test: float | None
    precision_test: float | None
    recall_test: float | None
    kind: str | None = None  # "region", "residue" or "amino_acid" (kept in the JSON summary)

    def as_summary(self) -> dict[str, Any]:
        """The JSON stored in `sae_features.top_concepts` (what prompts and the baseline read)."""
        return self.model_dump(exclude={"feature", "rank"})


def write_feature_stats(db: Database, stats: Iterable[FeatureStats], *, keep_concepts: bool = True) -> int:
    """Store the statistics of every feature of one index (rows of features beyond them go).

    With `keep_concepts` the concept associations already stored stay (same SAE weights, re-indexed);
    without, they are deleted too (they belonged to other weights).
    """
    rows = [
        {
            "sae_id": s.sae_id,
            "feature": s.feature,
            "max_activation": s.max_activation,
            "frac_residues": s.frac_residues,
            "frac_proteins": s.frac_proteins,
            "quantiles": to_json(list(s.quantiles)),
            "index_hash": s.index_hash,
        }
        for s in stats
    ]
    with db.transaction():
        for sae_id in {row["sae_id"] for row in rows}:
            n_features = 1 + max(row["feature"] for row in rows if row["sae_id"] == sae_id)
            if not keep_concepts:
                db.execute("delete from feature_concepts where sae_id = ?", (sae_id,))
                db.execute("delete from sae_features where sae_id = ?", (sae_id,))
            db.execute("delete from feature_concepts where sae_id = ? and feature >= ?", (sae_id, n_features))
            db.execute("delete from sae_features where sae_id = ? and feature >= ?", (sae_id, n_features))
        db.table("sae_features").upsert_all(rows, pk=("sae_id", "feature"), batch_size=1000)
    return len(rows)


def _stats_from_row(row: Mapping[str, Any]) -> FeatureStats:
    return FeatureStats(
        sae_id=row["sae_id"],
        feature=row["feature"],
        max_activation=row["max_activation"] or 0.0,
        frac_residues=row["frac_residues"] or 0.0,
        frac_proteins=row["frac_proteins"] or 0.0,
        quantiles=tuple(json.loads(row["quantiles"])) if row["quantiles"] else (),
        index_hash=row["index_hash"],
        top_concepts=tuple(json.loads(row["top_concepts"])) if row["top_concepts"] else (),
    )


def get_feature_stats(db: Database, sae_id: str, feature: int) -> FeatureStats | None:
    rows = db.query("select * from sae_features where sae_id = ? and feature = ?", (sae_id, feature))
    return _stats_from_row(rows[0]) if rows else None


def list_feature_stats(db: Database, sae_id: str) -> list[FeatureStats]:
    rows = db.query("select * from sae_features where sae_id = ? order by feature", (sae_id,))
    return [_stats_from_row(row) for row in rows]


def feature_stats_of(db: Database, sae_id: str, features: Sequence[int]) -> dict[int, FeatureStats]:
    """The stored statistics of some features of `sae_id`, by feature (absent ones left out)."""
    marks = ",".join("?" * len(features))
    rows = db.query(f"select * from sae_features where sae_id = ? and feature in ({marks})",
                    (sae_id, *(int(f) for f in features)))
    return {row["feature"]: _stats_from_row(row) for row in rows}


def delete_feature_stats(db: Database, sae_id: str) -> None:
    """Forget every feature row of `sae_id` (both tables), e.g. before re-indexing another SAE file."""
    with db.transaction():
        db.execute("delete from feature_concepts where sae_id = ?", (sae_id,))
        db.execute("delete from sae_features where sae_id = ?", (sae_id,))


def write_feature_concepts(db: Database, sae_id: str, concepts: Sequence[FeatureConcept],
                           n_features: int) -> None:
    """Replace all concept associations of `sae_id`.

    Every feature 0..n_features-1 gets its `top_concepts` JSON set (an empty list where none), so
    an old association never survives a new evaluation.
    """
    by_feature: dict[int, list[FeatureConcept]] = {}
    for item in concepts:
        by_feature.setdefault(item.feature, []).append(item)
    rows = [
        {
            "sae_id": sae_id,
            "feature": c.feature,
            "concept": c.concept,
            "rank": c.rank,
            "threshold": c.threshold,
            "f1_valid": c.f1_valid,
            "f1_test": c.f1_test,
            "precision_test": c.precision_test,
            "recall_test": c.recall_test,
        }
        for c in concepts
    ]
    with db.transaction():
        db.execute("delete from feature_concepts where sae_id = ?", (sae_id,))
        if rows:
            db.table("feature_concepts").insert_all(rows, batch_size=1000)
        summaries = []
        for feature in range(n_features):
            ranked = sorted(by_feature.get(feature, []), key=lambda c: c.rank)
            summaries.append({"sae_id": sae_id, "feature": feature,
                              "top_concepts": to_json([c.as_summary() for c in ranked])})
        db.table("sae_features").upsert_all(summaries, pk=("sae_id", "feature"), batch_size=1000)


def get_top_concepts(db: Database, sae_id: str, feature: int) -> list[dict[str, Any]]:
    """The feature's concepts as stored in `sae_features.top_concepts` (best first; [] if none)."""
    rows = db.query("select top_concepts from sae_features where sae_id = ? and feature = ?",
                    (sae_id, feature))
    if not rows or not rows[0]["top_concepts"]:
        return []
    return list(json.loads(rows[0]["top_concepts"]))


def get_feature_concepts(db: Database, sae_id: str, feature: int | None = None) -> list[FeatureConcept]:
    """Rows of `feature_concepts` for one feature or all, by feature then rank."""
    sql = "select * from feature_concepts where sae_id = ?"
    params: tuple[Any, ...] = (sae_id,)
    if feature is not None:
        sql += " and feature = ?"
        params += (feature,)
    rows = db.query(sql + " order by feature, rank", params)
    kinds: dict[tuple[int, str], str | None] = {}
    for summary in db.query("select feature, top_concepts from sae_features where sae_id = ?"
                            + (" and feature = ?" if feature is not None else ""), params):
        for item in json.loads(summary["top_concepts"] or "[]"):
            kinds[(summary["feature"], item.get("concept"))] = item.get("kind")
    return [
        FeatureConcept.model_validate({**{k: v for k, v in row.items() if k != "sae_id"},
                                       "kind": kinds.get((row["feature"], row["concept"]))})
        for row in rows
    ]
