"""What serve's pages show, read straight from the database and the activation index.

storage/ must not import sae/, and the viewer's rendering takes plain data (storage/export.py), so
this module is where a feature's label, statistics, examples and suggestions are joined, per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from agent.export_bundle import export_examples
from storage.errors import NotFoundError, PlmlabelError
from storage.export import ExportExample, ExportFeature, ExportSae
from storage.features_store import FeatureStats, get_feature_stats
from storage.labels import StoredLabel, get_label
from storage.paths import model_display_name
from storage.protein import Protein
from storage.saes import SaeRecord, get_sae
from storage.suggestions import Suggestion, list_suggestions
from storage.workspace import Workspace

try:  # the viewer's loader of one feature's page data (histogram, examples, suggestions), once it is there
    from agent.export_bundle import load_export_feature
except ImportError:  # pragma: no cover - depends on which viewer is installed
    load_export_feature = None

MAX_SUGGESTIONS = 100  # rows of suggestions on one page


class FeatureView(BaseModel):
    """One feature's page: its label (None when not labeled yet), statistics, examples, suggestions."""

    sae: ExportSae
    feature: int
    label: StoredLabel | None
    export: ExportFeature | None  # what the static viewer renders; None without a label
    stats: FeatureStats | None
    examples_problem: str | None = None  # why no example sequences are shown
    suggestions: list[Suggestion] = []
    previous: int | None = None  # the neighbouring labeled features
    next: int | None = None


class FiredFeature(BaseModel):
    """A feature on a pasted sequence: how strongly and where it fires."""

    feature: int
    max_activation: float
    normalized: float | None  # of the feature's max over the index, when known
    n_residues: int  # residues with activation > 0
    ranges: list[tuple[int, int]]  # 1-based inclusive runs of firing residues
    label: str | None = None
    validated: bool = False


def export_sae(record: SaeRecord) -> ExportSae:
    sae = ExportSae(**{key: getattr(record, key) for key in ExportSae.model_fields})
    sae.plm_model = model_display_name(sae.plm_model)  # never a local path on a page
    return sae


def require_feature(record: SaeRecord, feature: int) -> None:
    if not 0 <= feature < record.d_sae:
        raise NotFoundError(f"SAE {record.sae_id!r} has features 0 to {record.d_sae - 1}; there is no "
                            f"feature {feature}.")


def _neighbours(db: Any, sae_id: str, feature: int) -> tuple[int | None, int | None]:
    where = "from labels where sae_id = ? and status = 'ok' and feature"
    before = db.query(f"select max(feature) as f {where} < ?", (sae_id, feature))
    after = db.query(f"select min(feature) as f {where} > ?", (sae_id, feature))
    return before[0]["f"], after[0]["f"]


def feature_view(workspace: Workspace, db: Any, sae_id: str, feature: int) -> FeatureView:
    """Everything the feature page shows; NotFoundError for an unknown SAE or a feature out of range."""
    from sae.index import load_feature_examples

    record = get_sae(db, sae_id)
    require_feature(record, feature)
    label = get_label(db, sae_id, feature)
    if label is not None and label.status != "ok":
        label = None
    stats = get_feature_stats(db, sae_id, feature)
    examples: list[ExportExample] = []
    problem = None
    n_active = None
    try:
        found = load_feature_examples(workspace, db, sae_id, feature)
    except PlmlabelError as exc:
        problem = str(exc)
    else:
        examples = export_examples(found)
        if found.n_indexed:
            n_active = round(found.frac_proteins * found.n_indexed)
    export = None
    if label is not None and load_export_feature is not None:
        export = load_export_feature(workspace, db, sae_id, feature)
    elif label is not None:
        export = ExportFeature(
            record=label, max_activation=stats.max_activation if stats else None,
            frac_proteins=stats.frac_proteins if stats else None,
            top_concepts=[dict(c) for c in stats.top_concepts] if stats else [],
            n_active=n_active, examples=examples,
        )
    previous, following = _neighbours(db, sae_id, feature)
    return FeatureView(
        sae=export_sae(record), feature=feature, label=label, export=export, stats=stats,
        examples_problem=problem,
        suggestions=list_suggestions(db, sae_id, feature, limit=MAX_SUGGESTIONS),
        previous=previous, next=following,
    )


def protein_suggestions(db: Any, sae_id: str, accession: str) -> list[Suggestion]:
    get_sae(db, sae_id)
    return list_suggestions(db, sae_id, accession=accession, limit=MAX_SUGGESTIONS)


def firing_ranges(values: np.ndarray) -> list[tuple[int, int]]:
    """1-based inclusive runs where `values` > 0."""
    on = np.flatnonzero(values > 0)
    if on.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(on) > 1)
    starts = np.concatenate(([on[0]], on[breaks + 1]))
    ends = np.concatenate((on[breaks], [on[-1]]))
    return [(int(s) + 1, int(e) + 1) for s, e in zip(starts, ends, strict=True)]


def fired_features(db: Any, sae_id: str, activations: np.ndarray, limit: int) -> list[FiredFeature]:
    """The features that fire on a sequence ([length, d_sae]), strongest (of their max) first."""
    peaks = activations.max(axis=0) if activations.size else np.zeros(activations.shape[1])
    fired = np.flatnonzero(peaks > 0)
    stats = {row["feature"]: row["max_activation"] for row in db.query(
        "select feature, max_activation from sae_features where sae_id = ?", (sae_id,))}
    labels = {row["feature"]: row for row in db.query(
        "select feature, label, validated from labels where sae_id = ? and status = 'ok'", (sae_id,))}

    def normalized(feature: int) -> float | None:
        top = stats.get(feature)
        return float(peaks[feature]) / top if top else None

    order = sorted(fired.tolist(), key=lambda f: (-(normalized(f) or 0.0), -float(peaks[f]), f))
    rows = []
    for feature in order[:limit]:
        column = activations[:, feature]
        label = labels.get(feature)
        rows.append(FiredFeature(
            feature=feature, max_activation=float(peaks[feature]), normalized=normalized(feature),
            n_residues=int((column > 0).sum()), ranges=firing_ranges(column),
            label=label["label"] if label else None, validated=bool(label["validated"]) if label else False,
        ))
    return rows


def get_workspace_protein(db: Any, accession: str) -> Protein | None:
    from storage.proteins import get_protein

    return get_protein(db, accession)
