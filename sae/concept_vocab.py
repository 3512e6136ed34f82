"""The Swiss-Prot concept vocabulary of InterPLM's F1 protocol, and per-protein concept intervals.

A concept is a feature type ("Transmembrane"), or a type and subtype ("Zinc finger: C2H2-type",
"Binding site: Zn(2+)", "Domain: Protein kinase"), kept when it occurs in at least `min_proteins`
proteins; plus the 20 amino acids ("Amino acid: C"), which are scored but reported apart (they are
tokens, not biology). Subtypes are normalised so numbered instances pool: "C2H2-type 3" and
"C2H2-type 4; degenerate" are both "C2H2-type".

Concepts have a kind that decides how recall is counted:
  region       recall per annotated instance: a domain is found if any residue in it fires
  residue      recall per residue (single-site annotations: binding sites, modified residues, ...)
  amino_acid   per residue, reported separately
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from storage.protein import Protein, ProteinFeature

Kind = Literal["region", "residue", "amino_acid"]

# type -> where its subtype comes from; types not listed here and not in ANY_ONLY are not concepts
SUBTYPED: dict[str, str] = {
    "Active site": "description", "Binding site": "ligand", "Site": "description",
    "Modified residue": "description", "Glycosylation": "description", "Lipidation": "description",
    "Cross-link": "description", "Zinc finger": "description", "DNA binding": "description",
    "Domain": "description", "Repeat": "description", "Region": "description", "Motif": "description",
    "Compositional bias": "description", "Transmembrane": "description", "Intramembrane": "description",
    "Topological domain": "description", "Transit peptide": "description",
}
ANY_ONLY = frozenset({"Disulfide bond", "Coiled coil", "Signal", "Propeptide", "Peptide", "Helix",
                      "Beta strand", "Turn"})
RESIDUE_TYPES = frozenset({"Active site", "Binding site", "Site", "Modified residue", "Glycosylation",
                           "Lipidation", "Cross-link"})
PAIRED_TYPES = frozenset({"Disulfide bond", "Cross-link"})  # start..end names two residues, not a span
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
AA_PREFIX = "Amino acid: "

_NUMBERED = re.compile(r"\s+\d+$")
_AA_CODES = np.full(256, -1, dtype=np.int64)
_AA_CODES[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(len(AMINO_ACIDS))


@dataclass(frozen=True)
class Concept:
    name: str
    kind: Kind
    n_proteins: int  # proteins carrying it, in the set the vocabulary was built from


def subtype(feature: ProteinFeature) -> str | None:
    """The normalised subtype of a feature, or None."""
    source = SUBTYPED.get(feature.type)
    text = feature.ligand if source == "ligand" else feature.description if source else None
    if not text:
        return None
    text = _NUMBERED.sub("", text.split(";")[0].strip()).strip()
    return text or None


def concept_names(feature: ProteinFeature) -> list[str]:
    """The concepts one feature belongs to (before the min_proteins filter)."""
    if feature.type not in SUBTYPED and feature.type not in ANY_ONLY:
        return []
    names = [feature.type]
    sub = subtype(feature)
    if sub:
        names.append(f"{feature.type}: {sub}")
    return names


def _kind(feature_type: str) -> Kind:
    return "residue" if feature_type in RESIDUE_TYPES else "region"


@dataclass
class ProteinConcepts:
    """Which concepts cover each residue of one protein (0-based residues).

    `res_*` is a CSR over residues of the non-amino-acid concepts covering each one (each concept
    once per residue: what precision and per-residue recall count); `inst_*` a CSR over residues of
    the region instances covering each one (a disulfide bond is one instance on two residues).
    """

    length: int
    amino_acid: np.ndarray  # int64 [L]: concept index of the residue's amino acid, -1 if non-standard
    res_ptr: np.ndarray  # int64 [L + 1]
    res_concept: np.ndarray  # int64 [M]
    inst_ptr: np.ndarray  # int64 [L + 1]
    inst_id: np.ndarray  # int64 [M2]
    inst_concept: np.ndarray  # int64 [n_instances]

    @property
    def n_instances(self) -> int:
        return len(self.inst_concept)

    def residues_of(self, concept: int) -> np.ndarray:
        """0-based residues covered by `concept` (amino-acid concepts included)."""
        rows = np.repeat(np.arange(self.length), np.diff(self.res_ptr))
        return np.union1d(rows[self.res_concept == concept], np.flatnonzero(self.amino_acid == concept))

    def concepts_present(self) -> np.ndarray:
        present = np.concatenate([self.res_concept, self.amino_acid[self.amino_acid >= 0]])
        return np.unique(present)


def _csr(length: int, positions: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ptr [L + 1], values sorted by position) from parallel lists of position and value arrays."""
    pos = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
    val = np.concatenate(values) if values else np.empty(0, dtype=np.int64)
    order = np.argsort(pos, kind="stable")
    ptr = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(np.bincount(pos, minlength=length), out=ptr[1:])
    return ptr, val[order].astype(np.int64)


@dataclass
class ConceptVocabulary:
    concepts: list[Concept]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {c.name: i for i, c in enumerate(self.concepts)}

    def __len__(self) -> int:
        return len(self.concepts)

    @property
    def kinds(self) -> np.ndarray:
        return np.array([c.kind for c in self.concepts])

    @classmethod
    def build(cls, proteins: Iterable[Protein], min_proteins: int = 10) -> ConceptVocabulary:
        """Concepts present in at least `min_proteins` of `proteins`, then the 20 amino acids."""
        counts: Counter[str] = Counter()
        kinds: dict[str, Kind] = {}
        aa_counts: Counter[str] = Counter()
        for protein in proteins:
            names: set[str] = set()
            for feature in protein.features:
                for name in concept_names(feature):
                    names.add(name)
                    kinds[name] = _kind(feature.type)
            counts.update(names)
            aa_counts.update(set(protein.sequence) & set(AMINO_ACIDS))
        kept = sorted(name for name, n in counts.items() if n >= min_proteins)
        concepts = [Concept(name, kinds[name], counts[name]) for name in kept]
        concepts += [Concept(AA_PREFIX + aa, "amino_acid", aa_counts[aa]) for aa in AMINO_ACIDS]
        return cls(concepts)

    def annotate(self, protein: Protein, length: int | None = None) -> ProteinConcepts:
        """The protein's concepts over its first `length` residues (the embedded ones)."""
        length = protein.length if length is None else min(length, len(protein.sequence) or length)
        masks: dict[int, np.ndarray] = {}
        inst_concept: list[int] = []
        inst_pos: list[np.ndarray] = []
        inst_ids: list[np.ndarray] = []
        for feature in protein.features:
            spans = _spans(feature, length)
            if not spans:
                continue
            covered = np.concatenate([np.arange(s, e) for s, e in spans])
            for name in concept_names(feature):
                c = self.index.get(name)
                if c is None:
                    continue
                masks.setdefault(c, np.zeros(length, dtype=bool))[covered] = True
                if self.concepts[c].kind == "region":
                    inst_pos.append(covered)
                    inst_ids.append(np.full(len(covered), len(inst_concept)))
                    inst_concept.append(c)
        res_pos = [np.flatnonzero(mask) for mask in masks.values()]
        res_val = [np.full(len(p), c) for c, p in zip(masks, res_pos, strict=True)]
        res_ptr, res_concept = _csr(length, res_pos, res_val)
        inst_ptr, inst_id = _csr(length, inst_pos, inst_ids)
        codes = _AA_CODES[np.frombuffer(protein.sequence[:length].encode("ascii", "replace"), dtype=np.uint8)]
        amino_acid = np.full(length, -1, dtype=np.int64)
        known = codes >= 0
        amino_acid[: len(codes)][known] = self.index[AA_PREFIX + AMINO_ACIDS[0]] + codes[known]
        return ProteinConcepts(length=length, amino_acid=amino_acid, res_ptr=res_ptr, res_concept=res_concept,
                               inst_ptr=inst_ptr, inst_id=inst_id,
                               inst_concept=np.asarray(inst_concept, dtype=np.int64))


def _spans(feature: ProteinFeature, length: int) -> list[tuple[int, int]]:
    """0-based [start, end) spans of a feature inside the first `length` residues ([] if unknown)."""
    if feature.start is None or feature.end is None or "?" in (feature.start_modifier, feature.end_modifier):
        return []
    start, end = min(feature.start, feature.end), max(feature.start, feature.end)
    if feature.type in PAIRED_TYPES and start != end:
        return [(p - 1, p) for p in (start, end) if 1 <= p <= length]
    s, e = max(start, 1) - 1, min(end, length)
    return [(s, e)] if s < e else []
