"""`label --select informative`: the features a person would want labeled, best first, each with why.

    ranking = rank_informative(profiles, n_indexed=300)
    ranking.picks[:48]          # Pick(feature, reason, ...), in rank order
    ranking.note()              # one line: how many were left out, and why

Left out, whatever else they show:
- dead features (never fire on the indexed proteins);
- features firing on fewer than `min_proteins` proteins: the index shows up to 30 firing proteins
  as examples (10 top + 2 in each of 10 bins, by default) and draws the held-out proteins a label
  is scored on from the rest, so fewer leave no firing held-out protein to predict;
- features firing on more than `max_frac` of the proteins: almost always on, so "which proteins" has
  little answer (the demo's old `--top 48` were all of this kind, and none validated).

The rest, in this order:
1. features with a concept association from `plmlabel concepts` (test F1 >= `min_f1` on some
   Swiss-Prot concept), by that F1, best first;
2. the others by their activation spread: the standard deviation of the per-protein max activation
   (over the feature's max; silent proteins count 0) across the indexed proteins, estimated from the
   stored decile edges of the firing proteins' maxima. A wide spread means strong, weak and silent
   proteins for a label to tell apart.
Ties go to the lower feature id, so the same index and concepts always give the same picks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MIN_PROTEINS = 40  # firing proteins: the examples' 30 plus a held-out share
MAX_FRAC = 0.9  # of the indexed proteins
MIN_F1 = 0.5  # test F1 that counts as a concept association (the demo's "F1 > 0.5" line)


@dataclass(frozen=True)
class FeatureProfile:
    """What the ranking reads of one indexed feature (from `sae_features` and `feature_concepts`)."""

    feature: int
    max_activation: float
    frac_proteins: float
    quantiles: Sequence[float] = ()  # decile edges of the non-zero per-protein maxima (raw units)
    concept: str | None = None  # the concept of its best test F1
    f1_test: float | None = None


@dataclass(frozen=True)
class Pick:
    feature: int
    reason: str
    by: str  # "concept" or "spread"
    spread: float


@dataclass(frozen=True)
class InformativeRanking:
    picks: list[Pick]
    n_features: int
    n_dead: int
    n_rare: int
    n_universal: int

    def note(self, n_chosen: int | None = None) -> str:
        """One line on how the picks were made (`n_chosen`: how many of them a limit kept)."""
        chosen = self.picks if n_chosen is None else self.picks[:n_chosen]
        by_concept = sum(1 for p in chosen if p.by == "concept")
        return (
            f"--select informative: {len(chosen):,} of {self.n_features:,} features ({by_concept} by a "
            f"concept association at test F1 >= {MIN_F1}, {len(chosen) - by_concept} by activation spread); "
            f"left out {self.n_dead:,} dead, {self.n_rare:,} firing on fewer than {MIN_PROTEINS} proteins, "
            f"{self.n_universal:,} firing on more than {MAX_FRAC:.0%} of them"
        )


def activation_spread(frac_proteins: float, max_activation: float, quantiles: Sequence[float]) -> float:
    """Estimated SD of per-protein max / feature max over all indexed proteins (silent ones at 0).

    The firing proteins' maxima are taken as uniform within each of the stored decile intervals, so
    the figure needs no pass over the index. 0 for a dead feature or one without stored deciles.
    """
    if max_activation <= 0 or len(quantiles) < 2 or frac_proteins <= 0:
        return 0.0
    edges = [min(max(q / max_activation, 0.0), 1.0) for q in quantiles]
    share = 1.0 / (len(edges) - 1)
    mean = sum(share * (a + b) / 2 for a, b in zip(edges, edges[1:], strict=False))
    second = sum(share * (a * a + a * b + b * b) / 3 for a, b in zip(edges, edges[1:], strict=False))
    overall_mean, overall_second = frac_proteins * mean, frac_proteins * second
    return math.sqrt(max(overall_second - overall_mean**2, 0.0))


def rank_informative(
    profiles: Iterable[FeatureProfile],
    *,
    n_indexed: int,
    min_proteins: int = MIN_PROTEINS,
    max_frac: float = MAX_FRAC,
    min_f1: float = MIN_F1,
) -> InformativeRanking:
    """Every feature worth labeling, best first, with its reason (see the module docstring)."""
    n_features = n_dead = n_rare = n_universal = 0
    by_concept: list[tuple[float, float, int, Pick]] = []
    by_spread: list[tuple[float, int, Pick]] = []
    for p in profiles:
        n_features += 1
        n_firing = round(p.frac_proteins * n_indexed)
        if p.max_activation <= 0 or n_firing == 0:
            n_dead += 1
            continue
        if n_firing < min_proteins:
            n_rare += 1
            continue
        if p.frac_proteins > max_frac:
            n_universal += 1
            continue
        spread = activation_spread(p.frac_proteins, p.max_activation, p.quantiles)
        fires = f"fires on {p.frac_proteins:.0%} of proteins, spread {spread:.2f}"
        if p.f1_test is not None and p.f1_test >= min_f1 and p.concept:
            reason = f"concept {p.concept!r} at test F1 {p.f1_test:.2f}; {fires}"
            by_concept.append((-p.f1_test, -spread, p.feature, Pick(p.feature, reason, "concept", spread)))
        else:
            reason = f"no concept association; {fires}"
            by_spread.append((-spread, p.feature, Pick(p.feature, reason, "spread", spread)))
    by_concept.sort(key=lambda row: row[:3])
    by_spread.sort(key=lambda row: row[:2])
    return InformativeRanking(
        picks=[row[-1] for row in by_concept] + [row[-1] for row in by_spread],
        n_features=n_features,
        n_dead=n_dead,
        n_rare=n_rare,
        n_universal=n_universal,
    )
