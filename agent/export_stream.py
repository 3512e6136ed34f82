"""Stream an export's features with their examples from the activation index, one feature at a time.

storage/ must not import sae/, so the join of labels (storage.export.iter_export_features) with the
index happens here. Per feature this reads only that feature's rows of the index (its per-protein
maxima and example slots) and the few proteins it shows, so memory stays flat in the number of
features; proteins recur across features and are cached (bounded).

    interprot    each activation range gets the 12 highest per-protein maxima in it over every indexed
                 protein (as InterProt's make_viz_files does over all its sequences); the index keeps
                 every residue only for a feature's example and held-out proteins, so other proteins
                 carry their peak residue only (ExportExample.all_residues False).
    neuronpedia  the feature's example proteins (top and quantile), every residue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from agent.export_bundle import IndexProteins
from sae.index import open_index
from storage.export import ExportExample, ExportFeature, iter_export_features
from storage.export_interprot import pick_ranges
from storage.saes import get_sae
from storage.workspace import Workspace

_SHOWN_KINDS = ("top", "quantile")


class IndexExamples:
    """Fills ExportFeatures from one SAE's activation index."""

    def __init__(self, ws: Workspace, db: Any, sae_id: str) -> None:
        self.db, self.sae_id = db, sae_id
        self.reader = open_index(ws, sae_id, record=get_sae(db, sae_id))
        # accession -> (name, sequence)
        self._proteins: IndexProteins[tuple[str | None, str]] = IndexProteins(sae_id, self._read)

    def _read(self, accessions: list[str]) -> dict[str, tuple[str | None, str]]:
        marks = ",".join("?" * len(accessions))
        rows = self.db.query(f"select accession, protein_name, entry_name, sequence from proteins "
                             f"where accession in ({marks})", tuple(accessions))
        return {row["accession"]: (row["protein_name"] or row["entry_name"], row["sequence"]) for row in rows}

    def _stats(self, feature: ExportFeature) -> tuple[int, float]:
        f = feature.record.feature
        stats = self.reader.feature_stats(f)
        feature.max_activation = stats.max_activation
        feature.frac_proteins = stats.frac_proteins
        feature.n_active = stats.n_proteins
        return f, stats.max_activation

    def _example(self, accession: str, kind: str, value: float, scale: float, dense: np.ndarray,
                 all_residues: bool, proteins: dict[str, tuple[str | None, str]]) -> ExportExample:
        name, sequence = proteins[accession]
        activations = np.zeros(len(sequence), dtype=np.float32)
        n = min(len(dense), len(sequence))
        activations[:n] = dense[:n]
        return ExportExample(accession=accession, name=name, sequence=sequence, kind=kind,
                             max_activation=value, normalized=min(max(value / scale, 0.0), 1.0),
                             activations=activations.tolist(), all_residues=all_residues)

    def fill_ranges(self, feature: ExportFeature) -> ExportFeature:
        """InterProt: the top proteins of each activation range over the whole index."""
        f, feature_max = self._stats(feature)
        protein_ids, values, peaks = self.reader.protein_maxima(f)
        chosen = np.concatenate(pick_ranges(values, feature_max))
        slots = {slot.protein: slot for slot in self.reader.slots(f)}  # these keep every residue
        accessions = self.reader.accessions(protein_ids[chosen])
        proteins = self._proteins.get(accessions)
        scale = feature_max if feature_max > 0 else 1.0
        examples = []
        for position, accession in zip(chosen.tolist(), accessions, strict=True):
            protein, value = int(protein_ids[position]), float(values[position])
            slot = slots.get(protein)
            if slot is not None:
                dense = self.reader.residue_vector(f, slot)
            else:
                dense = np.zeros(int(peaks[position]) + 1, dtype=np.float32)
                dense[int(peaks[position])] = value
            examples.append(self._example(accession, "top", value, scale, dense, slot is not None, proteins))
        feature.examples = examples
        return feature

    def fill_slots(self, feature: ExportFeature) -> ExportFeature:
        """Neuronpedia: the feature's example proteins with every residue."""
        f, feature_max = self._stats(feature)
        slots = [s for s in self.reader.slots(f) if s.kind in _SHOWN_KINDS]
        proteins = self._proteins.get([s.accession for s in slots])
        scale = feature_max if feature_max > 0 else 1.0
        feature.examples = [self._example(s.accession, s.kind, s.max_activation, scale,
                                          self.reader.residue_vector(f, s), True, proteins) for s in slots]
        return feature


def stream_features(ws: Workspace, db: Any, sae_id: str, fmt: str, *, validated_only: bool = False,
                    advance: Callable[[], None] | None = None) -> Iterator[ExportFeature]:
    """The labels of `sae_id`, each with what `fmt` shows from the index, read as they are written."""
    examples = IndexExamples(ws, db, sae_id) if fmt in ("interprot", "neuronpedia") else None
    for feature in iter_export_features(db, sae_id, validated_only=validated_only, with_predictions=False):
        if examples is not None:
            feature = examples.fill_ranges(feature) if fmt == "interprot" else examples.fill_slots(feature)
        if advance:
            advance()
        yield feature
