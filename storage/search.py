"""Read side of the label store: full-text search with filters, and one feature's label for `show`.

Search runs FTS5 (porter stemming) over each label's short name and description, ranked by bm25 with
the short name weighted above the description. Whatever the user types is taken as literal words: every
whitespace-separated token is quoted as an FTS5 phrase, so `AND`, `NEAR`, `*`, `(` or a stray `"` are
searched for as text and never parsed as query syntax. All values reach SQL as parameters.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage.db import Database
from storage.errors import NotFoundError
from storage.labels import StoredLabel, get_label
from storage.saes import get_sae

# bm25 weights per FTS column (label, description): a hit in the short label counts more.
BM25_WEIGHTS = (2.0, 1.0)


class LabelQuery(BaseModel):
    """What `plmlabel query` asks for. Empty `text` lists labels by score."""

    model_config = ConfigDict(frozen=True)

    text: str = ""
    sae_id: str | None = None
    validated: bool = False  # only labels whose score cleared the threshold
    min_score: float | None = None  # Pearson r at least this
    concept: str | None = None  # case-insensitive substring of a label concept or a Swiss-Prot concept
    include_failed: bool = False
    limit: int = Field(20, ge=1)


class LabelHit(BaseModel):
    """One row of a search result."""

    sae_id: str
    feature: int
    status: str
    label: str | None
    description: str | None
    concepts: list[str] = []
    pearson: float | None
    spearman: float | None
    n_heldout: int | None
    validated: bool
    backend: str | None
    explainer_model: str | None
    created_at: str | None
    rank: float | None = None  # bm25 (lower is better); None when listing without text


def fts_phrase_query(text: str) -> str:
    """Turn user text into an FTS5 query of quoted tokens (implicit AND); '' when there are none."""
    tokens = text.split()
    return " ".join('"' + token.replace('"', '""') + '"' for token in tokens)


def _json_list(value: Any) -> list[str]:
    if not value:
        return []
    try:
        data = json.loads(value)
    except (TypeError, ValueError):
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_labels(db: Database, query: LabelQuery) -> list[LabelHit]:
    """Labels matching `query`: by bm25 when there is text, else by Pearson r (best first)."""
    if query.sae_id is not None:
        get_sae(db, query.sae_id)  # NotFoundError naming the known SAEs
    where: list[str] = []
    params: dict[str, Any] = {}
    match = fts_phrase_query(query.text)
    if match:
        where.append("labels_fts match :match")
        params["match"] = match
    if not query.include_failed:
        where.append("labels.status = 'ok'")
    if query.sae_id is not None:
        where.append("labels.sae_id = :sae_id")
        params["sae_id"] = query.sae_id
    if query.validated:
        where.append("labels.validated = 1")
    if query.min_score is not None:
        where.append("labels.pearson >= :min_score")
        params["min_score"] = query.min_score
    if query.concept:
        where.append(
            "(exists (select 1 from json_each(case when json_valid(labels.concepts) "
            "then labels.concepts else '[]' end) as c where c.value like :concept escape '\\') "
            "or exists (select 1 from feature_concepts fc where fc.sae_id = labels.sae_id "
            "and fc.feature = labels.feature and fc.concept like :concept escape '\\'))"
        )
        params["concept"] = _like_pattern(query.concept)
    params["limit"] = query.limit
    if match:
        params["w_label"], params["w_description"] = BM25_WEIGHTS
        rank = "bm25(labels_fts, :w_label, :w_description)"
        source = "labels join labels_fts on labels_fts.rowid = labels.id"
        order = f"{rank}, labels.pearson desc nulls last, labels.sae_id, labels.feature"
    else:
        rank = "null"
        source = "labels"
        order = "labels.pearson desc nulls last, labels.sae_id, labels.feature"
    sql = (
        f"select labels.*, {rank} as rank from {source}"
        + (" where " + " and ".join(where) if where else "")
        + f" order by {order} limit :limit"
    )
    return [_hit(row) for row in db.query(sql, params)]


def _hit(row: dict[str, Any]) -> LabelHit:
    return LabelHit(
        sae_id=row["sae_id"],
        feature=row["feature"],
        status=row["status"],
        label=row["label"],
        description=row["description"],
        concepts=_json_list(row["concepts"]),
        pearson=row["pearson"],
        spearman=row["spearman"],
        n_heldout=row["n_heldout"],
        validated=bool(row["validated"]),
        backend=row["backend"],
        explainer_model=row["explainer_model"],
        created_at=row["created_at"],
        rank=row["rank"],
    )


def require_label(db: Database, sae_id: str, feature: int) -> StoredLabel:
    """The label of one feature with its predictions; NotFoundError says what is missing."""
    sae = get_sae(db, sae_id)
    if feature < 0 or feature >= sae.d_sae:
        raise NotFoundError(f"SAE {sae_id!r} has features 0..{sae.d_sae - 1}; there is no feature {feature}.")
    label = get_label(db, sae_id, feature)
    if label is None:
        raise NotFoundError(
            f"feature {feature} of SAE {sae_id!r} has no label yet; "
            f"run `plmlabel label {sae_id} --features {feature}`."
        )
    return label
