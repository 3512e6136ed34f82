"""Missing-annotation suggestions, the pure part: which features to trust, where they fire, how to rank.

A feature is trusted for a concept when it tracks it on proteins it was not tuned on (InterPLM;
Silberg, Simon & Zou 2025):
  f1      its concept association (`plmlabel concepts`) reaches `min_f1` on the test split;
  label   a validated label of the feature names the concept among its concepts.
A protein is then suggested when the feature fires on it *the way it fires on annotated proteins*:
its normalised per-protein max is at least the lower `carrier_quantile` of the maxima on the proteins
that do carry the concept (so a weak, noisy activation that few annotated proteins would show is not
enough), and the protein lacks the concept. The association's threshold (chosen for residue-level F1
on the valid split) is not the gate: it is tuned to residues, and a carrier whose peak lies just under
it is still a carrier. It does decide which residues are reported (those above the lower of the
threshold and the gate, so the peak is always among them).

rank score = strength x firing, where strength is the better of the test F1 and the label's Pearson r
(the two say how far the feature can be trusted, both in [0, 1]), and firing is the protein's
normalised max over the carriers' median (capped at 1): a suggestion as strong as a typical carrier
ranks by the evidence alone, a weaker one below it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

TrustMode = Literal["f1", "label", "both", "either"]
TRUST_MODES: tuple[str, ...] = ("either", "f1", "label", "both")


@dataclass(frozen=True)
class ConceptAssociation:
    """One stored (feature, concept) association (what `feature_concepts` holds)."""

    feature: int
    concept: str
    kind: str | None
    threshold: float
    f1_test: float | None
    precision_test: float | None
    recall_test: float | None


@dataclass(frozen=True)
class FeatureLabel:
    feature: int
    label: str
    concepts: tuple[str, ...]
    score: float | None  # Pearson r on the test half
    validated: bool


@dataclass(frozen=True)
class Trusted:
    """A (feature, concept) pair the suggestions may rely on, and why."""

    association: ConceptAssociation
    label: FeatureLabel | None
    by_f1: bool

    @property
    def strength(self) -> float:
        f1 = self.association.f1_test if self.by_f1 else None
        score = self.label.score if self.label is not None else None
        return max(0.0, min(1.0, max(f1 or 0.0, score or 0.0)))


def concept_kind(name: str) -> str:
    """The kind of a concept from its name, when the stored row does not say it."""
    from sae.concept_vocab import AA_PREFIX, RESIDUE_TYPES

    if name.startswith(AA_PREFIX):
        return "amino_acid"
    return "residue" if name.split(":")[0].strip() in RESIDUE_TYPES else "region"


def label_names(concept: str, label_concepts: Iterable[str]) -> bool:
    """Whether a label's free-text concepts name a Swiss-Prot concept (case-insensitive).

    It names "Zinc finger: C2H2-type" by the full name or the subtype ("c2h2-type zinc finger" does);
    a concept without a subtype ("Transmembrane") by its name. The bare type of a subtyped concept is
    not enough ("Domain" is in too many labels).
    """
    name = concept.lower().strip()
    keys = [name]
    if ":" in name:
        keys.append(name.split(":", 1)[1].strip())
    for text in label_concepts:
        text = " ".join(str(text).lower().split())
        if not text:
            continue
        if any(key and (key in text or text == key) for key in keys) or (":" not in name and text in name
                                                                           and len(text) >= 4):
            return True
    return False


def trusted_concepts(associations: Sequence[ConceptAssociation], labels: dict[int, FeatureLabel], *,
                     min_f1: float, mode: TrustMode = "either") -> list[Trusted]:
    """The (feature, concept) pairs to suggest from; amino-acid concepts never (they are tokens)."""
    if mode not in TRUST_MODES:
        raise ValueError(f"unknown trust mode {mode!r}")
    out: list[Trusted] = []
    for assoc in associations:
        if (assoc.kind or concept_kind(assoc.concept)) == "amino_acid":
            continue
        by_f1 = assoc.f1_test is not None and assoc.f1_test >= min_f1
        label = labels.get(assoc.feature)
        by_label = label is not None and label.validated and label_names(assoc.concept, label.concepts)
        ok = {"f1": by_f1, "label": by_label, "both": by_f1 and by_label, "either": by_f1 or by_label}[mode]
        if ok:
            out.append(Trusted(assoc, label if by_label else None, by_f1))
    return out


def min_activation(carrier_peaks: np.ndarray, quantile: float) -> float | None:
    """The normalised per-protein max a suggestion needs: the `quantile` of the annotated proteins' maxima.

    Only carriers where the feature fires count; None when it fires on none (nothing to match).
    """
    peaks = np.asarray(carrier_peaks, dtype=np.float64)
    peaks = peaks[peaks > 0]
    if len(peaks) == 0:
        return None
    return float(np.quantile(peaks, quantile))


def firing_ranges(normalized: np.ndarray, threshold: float, max_gap: int = 2) -> list[tuple[int, int]]:
    """1-based inclusive ranges of residues above `threshold`; runs at most `max_gap` apart are merged."""
    positions = np.flatnonzero(np.asarray(normalized) > threshold)
    if len(positions) == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) > max_gap + 1)
    starts = np.r_[positions[0], positions[breaks + 1]]
    ends = np.r_[positions[breaks], positions[-1]]
    return [(int(s) + 1, int(e) + 1) for s, e in zip(starts, ends, strict=True)]


def rank_score(strength: float, normalized: float, carrier_median: float) -> float:
    """strength x min(1, normalised max / carriers' median normalised max) (see the module docstring)."""
    firing = 1.0 if carrier_median <= 0 else min(1.0, normalized / carrier_median)
    return round(float(strength) * float(firing), 6)
