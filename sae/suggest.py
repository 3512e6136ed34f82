"""Missing-annotation suggestions on a workspace: trusted features -> proteins that lack their concept.

    suggest(workspace, sae_id, ...) -> SuggestReport      compute (nothing written)
    store_suggestions(db, report)                          replace the SAE's stored suggestions

Reads the concept associations (`plmlabel concepts`), the validated labels, the activation index
(per-protein maxima: which proteins fire, how strongly) and, for the proteins to suggest only, the
embeddings (to find the residues that fire). The scoring rules are in sae/suggest_score.py.
The Swiss-Prot tables are only read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel

from sae.concept_vocab import concept_names
from sae.suggest_score import (
    ConceptAssociation,
    FeatureLabel,
    Trusted,
    TrustMode,
    concept_kind,
    firing_ranges,
    min_activation,
    rank_score,
    trusted_concepts,
)
from storage.db import Database
from storage.errors import InputError
from storage.protein import Protein
from storage.suggestions import Evidence, Suggestion, write_suggestions
from storage.workspace import Workspace


class SuggestReport(BaseModel):
    sae_id: str
    min_f1: float
    mode: str
    carrier_quantile: float
    n_trusted: int  # (feature, concept) pairs suggestions were looked for
    features: list[int]  # the trusted features
    scope: list[int] | None = None  # the features asked for (None: all); what storing replaces
    suggestions: list[Suggestion]  # best rank score first


def _associations(db: Database, sae_id: str) -> list[ConceptAssociation]:
    from storage.features_store import get_feature_concepts

    return [ConceptAssociation(feature=c.feature, concept=c.concept, kind=c.kind, threshold=c.threshold,
                               f1_test=c.f1_test, precision_test=c.precision_test, recall_test=c.recall_test)
            for c in get_feature_concepts(db, sae_id)]


def _labels(db: Database, sae_id: str) -> dict[int, FeatureLabel]:
    from storage.labels import list_labels

    return {r.feature: FeatureLabel(feature=r.feature, label=r.label or "", concepts=tuple(r.concepts),
                                    score=r.pearson, validated=bool(r.validated))
            for r in list_labels(db, sae_id, status="ok")}


_NEEDS = {
    "f1": "no concept association with test F1 >= {f1:g}",
    "label": "no validated label whose concepts name an associated Swiss-Prot concept",
    "both": "no concept association with test F1 >= {f1:g} that a validated label also names",
    "either": "no concept association with test F1 >= {f1:g} and no validated label naming one",
}


def _why_nothing(sae_id: str, features: Sequence[int] | None, associations: list[ConceptAssociation],
                 labels: dict[int, FeatureLabel], min_f1: float, mode: str) -> str:
    """One sentence: why no feature qualifies."""
    if not associations:
        return (f"nothing to suggest: SAE {sae_id!r} has no concept associations; run `plmlabel concepts "
                f"{sae_id}` first.")
    wanted = set(features) if features is not None else None
    rows = [a for a in associations if wanted is None or a.feature in wanted]
    best = max((a.f1_test or 0.0 for a in rows), default=None)
    n_validated = sum(1 for f, lab in labels.items() if lab.validated and (wanted is None or f in wanted))
    facts = (f"{'no association stored' if best is None else f'best test F1 {best:.2f}'}, "
             f"{n_validated} validated label{'s' if n_validated != 1 else ''}")
    need = _NEEDS[mode].format(f1=min_f1)
    if wanted is None:
        return f"nothing to suggest: the features of SAE {sae_id!r} have {need} ({facts})."
    names = ", ".join(map(str, sorted(wanted)))
    return f"nothing to suggest: feature {names} of SAE {sae_id!r} has {need} ({facts})."


def suggest(workspace: Workspace, sae_id: str, *, features: Sequence[int] | None = None, min_f1: float = 0.5,
            mode: TrustMode = "either", carrier_quantile: float = 0.1, limit: int | None = None,
            device: str | None = None, progress: Callable[[int, int], None] | None = None) -> SuggestReport:
    """Suggestions of SAE `sae_id` (see the module docstrings); InputError when no feature is trusted."""
    from sae.index import open_index
    from storage.proteins import get_proteins
    from storage.saes import get_sae

    if not np.isfinite(min_f1) or not 0 <= min_f1 <= 1:
        raise InputError("--min-f1 must be a number between 0 and 1.")
    if not np.isfinite(carrier_quantile) or not 0 <= carrier_quantile <= 1:
        raise InputError("--carrier-quantile must be a number between 0 and 1.")
    workspace.require()
    with workspace.db() as db:
        record = get_sae(db, sae_id)
        reader = open_index(workspace, sae_id, record=record)
        if features is not None:
            for f in features:
                reader.check_feature(f)
        associations = _associations(db, sae_id)
        labels = _labels(db, sae_id)
        trusted = [t for t in trusted_concepts(associations, labels, min_f1=min_f1, mode=mode)
                   if features is None or t.association.feature in set(features)]
        if not trusted:
            raise InputError(_why_nothing(sae_id, features, associations, labels, min_f1, mode))
        feature_max = reader.all_stats()["feature_max"]
        plans: list[tuple[Trusted, list[tuple[str, float]], float, float, int]] = []
        wanted: set[str] = set()
        for item in trusted:
            f = item.association.feature
            if feature_max[f] <= 0:
                continue
            ids, values, _ = reader.protein_maxima(f)
            accessions = reader.accessions(ids)
            proteins = get_proteins(db, accessions)
            norm = values / feature_max[f]
            carrying = np.array([_carries(proteins.get(a), item.association.concept) for a in accessions],
                                dtype=bool)
            floor = min_activation(norm[carrying], carrier_quantile)
            if floor is None:
                continue
            median = float(np.median(norm[carrying]))
            picked = [(a, float(v))
                      for a, v, c, n in zip(accessions, values.tolist(), carrying, norm, strict=True)
                      if not c and a in proteins and n >= floor]
            plans.append((item, picked, floor, median, int(carrying.sum())))
            wanted.update(a for a, _ in picked)
        residues = _feature_residues(workspace, record, wanted, {p[0].association.feature for p in plans},
                                     device, progress) if wanted else {}
    out: list[Suggestion] = []
    for item, picked, floor, median, n_carriers in plans:
        a = item.association
        scale = float(feature_max[a.feature])
        for accession, value in picked:
            acts = residues.get(accession, {}).get(a.feature)
            cut = min(a.threshold, np.nextafter(floor, -np.inf))
            ranges = firing_ranges(acts / scale, cut) if acts is not None else []
            normalized = min(value / scale, 1.0)
            evidence = Evidence(
                precision=a.precision_test, recall=a.recall_test, f1=a.f1_test, threshold=a.threshold,
                min_activation=round(floor, 4), label=item.label.label if item.label else None,
                label_score=item.label.score if item.label else None, n_carriers=n_carriers)
            out.append(Suggestion(
                sae_id=sae_id, feature=a.feature, accession=accession, concept=a.concept,
                kind=a.kind or concept_kind(a.concept),
                residues=tuple(ranges), activation=round(value, 6), normalized=round(normalized, 6),
                evidence=evidence, rank_score=rank_score(item.strength, normalized, median)))
    out.sort(key=lambda s: (-s.rank_score, s.feature, s.accession, s.concept))
    if limit is not None:
        out = out[:limit]
    return SuggestReport(sae_id=sae_id, min_f1=min_f1, mode=mode, carrier_quantile=carrier_quantile,
                         scope=None if features is None else sorted(set(features)),
                         n_trusted=len(trusted), features=sorted({t.association.feature for t in trusted}),
                         suggestions=out)


def _carries(protein: Protein | None, concept: str) -> bool:
    """Whether Swiss-Prot annotates `concept` on the protein (an unknown protein counts as carrying).

    A subtyped concept ("Transmembrane: Helical") counts as carried by a feature of its type with no
    subtype given: Swiss-Prot left the subtype open, it did not say the protein lacks it.
    """
    if protein is None:
        return True
    kind = concept.split(":")[0] if ":" in concept else None
    for feature in protein.features:
        names = concept_names(feature)
        if concept in names or (kind is not None and names == [kind]):
            return True
    return False


def _feature_residues(workspace: Workspace, record, accessions: set[str], features: set[int],
                      device: str | None, progress: Callable[[int, int], None] | None,
                      ) -> dict[str, dict[int, np.ndarray]]:
    """Raw per-residue activations of `features` on `accessions`, recomputed from the embeddings."""
    from sae.activations import encode_chunks, sae_encoder
    from sae.index import embedding_store_for, sae_directory
    from sae.model import load_sae
    from sae.plm import resolve_device

    settings = workspace.load_config()
    sae = load_sae(sae_directory(workspace, record), device=resolve_device(device or settings.plm.device))
    store, _, _ = embedding_store_for(workspace, record)
    columns = sorted(features)
    out: dict[str, dict[int, np.ndarray]] = {}
    done = 0
    for chunk in encode_chunks(store.iter_proteins(accessions), sae_encoder(sae), sae.d_sae):
        for accession, acts in chunk:
            out.setdefault(accession, {f: np.array(acts[:, f]) for f in columns})
        done += len(chunk.accessions)
        if progress:
            progress(done, len(accessions))
    return out


def store_suggestions(db: Database, report: SuggestReport) -> int:
    """Replace the stored suggestions of the report's SAE (Swiss-Prot rows are not touched)."""
    return write_suggestions(db, report.sae_id, report.suggestions, features=report.scope)
