"""What the agent may see of one feature: its examples and the validation half, never the test half.

`AgentView` is built from `FeatureExamples` by copying the examples and the validation half only:
the type has no field that could hold a test-half protein or activation, so no tool can return one.
Beyond them, an optional `Corpus` (the activation index and the database) adds other indexed
proteins with their per-protein max; it is handed the test half's accessions and leaves them out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sae.index import FeatureExamples, ResidueActivation
from storage.protein import Protein

Role = Literal["example", "validation", "index"]
CORPUS_FIRING = 600  # at most this many firing, and as many silent, index proteins per feature
CORPUS_SILENT = 600


@dataclass(frozen=True)
class SeenProtein:
    """A protein the agent may see, with the feature's activation on it."""

    protein: Protein
    normalized: float  # per-protein max / the feature's max, 0..1
    role: Role
    firing: tuple[ResidueActivation, ...] | None = None  # None: only the max is known (index proteins)

    @property
    def accession(self) -> str:
        return self.protein.accession


class Corpus(Protocol):
    """Other indexed proteins of a feature (never those in `exclude`), with their normalised max."""

    def proteins(self, feature: int, exclude: set[str]) -> list[SeenProtein]: ...


@dataclass
class AgentView:
    """One feature as the agent sees it. Holds no test-half data by construction."""

    sae_id: str
    feature: int
    max_activation: float
    examples: tuple[SeenProtein, ...]
    validation: tuple[SeenProtein, ...]
    load_corpus: Callable[[], list[SeenProtein]] | None = None
    _corpus: list[SeenProtein] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, examples: FeatureExamples, corpus: Corpus | None = None) -> AgentView:
        """The view of a feature: its examples and validation half (+ `corpus`, minus the test half)."""
        shown = tuple(SeenProtein(e.protein, e.normalized, "example", e.firing) for e in examples.examples)
        validation = tuple(
            SeenProtein(p, n, "validation", f)
            for p, n, f in zip(
                examples.validation,
                examples.validation_normalized,
                examples.validation_firing or ((),) * len(examples.validation),
                strict=True,
            )
        )
        # Everything the view itself holds, plus the test half: the corpus adds none of these.
        exclude = {p.accession for p in (*examples.heldout, *examples.validation)}
        exclude |= {e.protein.accession for e in examples.examples}
        feature = examples.feature
        load = (lambda: corpus.proteins(feature, exclude)) if corpus is not None else None
        return cls(examples.sae_id, feature, examples.max_activation, shown, validation, load)

    @property
    def seen(self) -> tuple[SeenProtein, ...]:
        """Examples and validation proteins: those with per-residue activations."""
        return self.examples + self.validation

    def population(self) -> list[SeenProtein]:
        """Every protein the agent may search: examples, validation half, other indexed proteins."""
        if self._corpus is None:
            self._corpus = self.load_corpus() if self.load_corpus is not None else []
        return [*self.seen, *self._corpus]

    def find(self, accession: str) -> SeenProtein | None:
        wanted = accession.strip().upper()
        return next((p for p in self.population() if p.accession.upper() == wanted), None)


def sample_corpus(items: Sequence[tuple[str, float]], seed: int) -> list[tuple[str, float]]:
    """A bounded, seeded sample of (accession, normalised max): firing proteins first, then silent."""
    rng = random.Random(seed)
    firing = [i for i in items if i[1] > 0]
    silent = [i for i in items if i[1] <= 0]
    if len(firing) > CORPUS_FIRING:
        firing = rng.sample(firing, CORPUS_FIRING)
    if len(silent) > CORPUS_SILENT:
        silent = rng.sample(silent, CORPUS_SILENT)
    return sorted(firing + silent)


class IndexCorpus:
    """The activation index and the database as a corpus: a bounded sample of each feature's proteins."""

    def __init__(self, reader: object, db: object, seed: int = 0) -> None:
        self.reader, self.db, self.seed = reader, db, seed

    def proteins(self, feature: int, exclude: set[str]) -> list[SeenProtein]:
        from storage.proteins import get_proteins

        reader = self.reader
        stats = reader.feature_stats(feature)  # type: ignore[attr-defined]
        scale = stats.max_activation if stats.max_activation > 0 else 1.0
        ids, values, _ = reader.protein_maxima(feature)  # type: ignore[attr-defined]
        firing = dict(zip(reader.accessions(ids), (float(v) / scale for v in values.tolist()), strict=True))  # type: ignore[attr-defined]
        everything = reader.accessions()  # type: ignore[attr-defined]
        items = [(a, min(firing.get(a, 0.0), 1.0)) for a in everything if a not in exclude]
        chosen = sample_corpus(items, self.seed + feature)
        found = get_proteins(self.db, [a for a, _ in chosen])
        return [SeenProtein(found[a], n, "index") for a, n in chosen if a in found]


class MemoryCorpus:
    """A corpus held in memory: per feature, (protein, normalised max) pairs (benches and tests)."""

    def __init__(self, by_feature: dict[int, Sequence[tuple[Protein, float]]], seed: int = 0) -> None:
        self.by_feature, self.seed = by_feature, seed

    def proteins(self, feature: int, exclude: set[str]) -> list[SeenProtein]:
        pairs = self.by_feature.get(feature, ())
        items = {p.accession: (p, n) for p, n in pairs if p.accession not in exclude}
        chosen = sample_corpus([(a, n) for a, (_, n) in items.items()], self.seed + feature)
        return [SeenProtein(items[a][0], n, "index") for a, n in chosen]
