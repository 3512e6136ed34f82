"""Gather what an export needs: the stored labels (storage.export) plus example sequences (sae.index).

storage/ must not import sae/, so the join of labels with the activation index happens here, in the
application layer; `plmlabel export` and `plmlabel demo` both call `gather_bundle`.

The bundle it returns streams: its `features` is a `FeatureStream` that reads the labels a batch at a
time and each feature's examples from the index as the writer asks for it, opening its own database
connection, so an export of 10,000 features holds about one feature in memory (plus a bounded cache of
proteins, which recur across features).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np

from sae.index import FeatureExamples, open_index
from storage.errors import NotFoundError, PlmlabelError
from storage.export import (
    ActivationHistogram,
    ExportAnnotation,
    ExportBundle,
    ExportExample,
    ExportFeature,
    count_export_features,
    export_sae,
    iter_export_features,
)
from storage.protein import Protein
from storage.proteins import get_proteins
from storage.saes import get_sae
from storage.suggestions import Suggestion, list_suggestions
from storage.workspace import Workspace

# The formats that carry example sequences (the others are label tables).
WITH_EXAMPLES = ("interprot", "html")
HISTOGRAM_BINS = 20
_PROTEIN_CACHE = 4096  # proteins kept between features (a few MB)
_EXAMPLE_KINDS = ("top", "quantile", "silent")


def _annotations(protein: Protein) -> list[ExportAnnotation]:
    # model_construct: these come from a validated Protein; validating again per example cost the most
    return [ExportAnnotation.model_construct(type=f.type, start=f.start, end=f.end,
                                             description=f.description or f.ligand)
            for f in protein.features]


def _example(protein: Protein, kind: str, max_activation: float, normalized: float,
             firing: list[tuple[int, float]], suggestions: list[Suggestion] | None = None,
             annotations: list[ExportAnnotation] | None = None) -> ExportExample:
    sequence = protein.sequence
    activations = [0.0] * len(sequence)
    for position, value in firing:
        if 1 <= position <= len(sequence):
            activations[position - 1] = float(value)
    return ExportExample.model_construct(
        accession=protein.accession, name=protein.protein_name or protein.entry_name,
        organism=protein.organism, sequence=sequence, kind=kind, max_activation=float(max_activation),
        normalized=float(normalized), activations=activations,
        annotations=_annotations(protein) if annotations is None else annotations,
        suggestions=suggestions or [],
    )


def export_examples(examples: FeatureExamples) -> list[ExportExample]:
    """FeatureExamples -> the plain examples storage/export.py writes, activations dense per residue."""
    return [_example(ex.protein, ex.kind, ex.max_activation, ex.normalized,
                     [(r.position, r.value) for r in ex.firing]) for ex in examples.examples]


def histogram(maxima: np.ndarray, max_activation: float, n_proteins: int,
              bins: int = HISTOGRAM_BINS) -> ActivationHistogram:
    """Counts of the per-protein maxima of firing proteins in `bins` equal slices of (0, 1] of the
    feature's max; the proteins absent from `maxima` are the silent ones."""
    scale = max_activation if max_activation > 0 else 1.0
    normalized = np.clip(np.asarray(maxima, dtype=np.float64) / scale, 0.0, 1.0)
    normalized = normalized[normalized > 0]
    index = np.minimum(np.ceil(normalized * bins).astype(np.int64) - 1, bins - 1)
    counts = np.bincount(np.maximum(index, 0), minlength=bins)
    return ActivationHistogram(edges=[i / bins for i in range(bins + 1)], counts=counts.tolist(),
                               n_silent=max(n_proteins - int(normalized.size), 0), n_proteins=n_proteins)


_Cached = tuple[Protein, list[ExportAnnotation], list[Suggestion]]
T = TypeVar("T")


class IndexProteins(Generic[T]):
    """What an export needs of the proteins of one SAE's index, kept between features (the most recent
    `size`: proteins recur across features). `read(accessions)` gets those not kept; a protein the index
    names but the database lacks means the index is stale (NotFoundError)."""

    def __init__(self, sae_id: str, read: Callable[[list[str]], dict[str, T]],
                 size: int = _PROTEIN_CACHE) -> None:
        self.sae_id, self.read, self.size = sae_id, read, size
        self._kept: OrderedDict[str, T] = OrderedDict()

    def get(self, accessions: list[str]) -> dict[str, T]:
        missing = [a for a in dict.fromkeys(accessions) if a not in self._kept]
        if missing:
            found = self.read(missing)
            gone = [a for a in missing if a not in found]
            if gone:
                raise NotFoundError(f"{len(gone)} proteins of the index of {self.sae_id!r} are no longer in "
                                    f"the database ({', '.join(gone[:3])}); rebuild with "
                                    f"`plmlabel index {self.sae_id}`.")
            self._kept.update((a, found[a]) for a in missing)
        out = {}
        for accession in accessions:
            self._kept.move_to_end(accession)
            out[accession] = self._kept[accession]
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return out


class ExampleReader:
    """Examples, histogram and firing counts of one SAE's features, straight from its index."""

    def __init__(self, ws: Workspace, db: Any, sae_id: str) -> None:
        self.db, self.sae_id = db, sae_id
        self.reader = open_index(ws, sae_id, record=get_sae(db, sae_id))
        self._proteins: IndexProteins[_Cached] = IndexProteins(sae_id, self._read)

    def _read(self, accessions: list[str]) -> dict[str, _Cached]:
        return {accession: (protein, _annotations(protein),
                            list_suggestions(self.db, self.sae_id, accession=accession))
                for accession, protein in get_proteins(self.db, accessions).items()}

    def fill(self, feature: ExportFeature) -> None:
        """Set the feature's examples, histogram and firing statistics from the index."""
        f = feature.record.feature
        stats = self.reader.feature_stats(f)
        slots = [s for s in self.reader.slots(f) if s.kind in _EXAMPLE_KINDS]
        proteins = self._proteins.get([s.accession for s in slots])
        scale = stats.max_activation if stats.max_activation > 0 else 1.0
        examples = []
        for slot in slots:
            positions, values = self.reader.residue_activations(f, slot.slot)
            protein, annotations, suggestions = proteins[slot.accession]
            examples.append(_example(protein, slot.kind, slot.max_activation,
                                     min(max(slot.max_activation / scale, 0.0), 1.0),
                                     list(zip((positions + 1).tolist(), values.tolist(), strict=True)),
                                     suggestions, annotations))
        _, maxima, _ = self.reader.protein_maxima(f)
        feature.examples = examples
        feature.histogram = histogram(maxima, stats.max_activation, self.reader.n_proteins)
        feature.n_active = stats.n_proteins
        feature.max_activation = stats.max_activation
        feature.frac_proteins = stats.frac_proteins
        feature.frac_residues = stats.frac_residues


class FeatureStream:
    """The features of an export, read when iterated (each pass opens its own connection).

    `len()` counts the labels without reading them; `problems` collects why features had no examples.
    """

    def __init__(self, ws: Workspace, sae_id: str, *, validated_only: bool, with_examples: bool,
                 n_features: int, advance: Callable[[], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.ws, self.sae_id, self.validated_only = ws, sae_id, validated_only
        self.with_examples, self.n_features = with_examples, n_features
        self.advance, self.warn = advance, warn
        self.problems: list[str] = []

    def __len__(self) -> int:
        return self.n_features

    def __iter__(self) -> Iterator[ExportFeature]:
        self.problems = []
        with self.ws.db() as db:
            examples = None
            if self.with_examples:
                try:
                    examples = ExampleReader(self.ws, db, self.sae_id)
                except PlmlabelError as exc:
                    self.problems.append(str(exc))
            for feature in iter_export_features(db, self.sae_id, validated_only=self.validated_only):
                if examples is not None:
                    try:
                        examples.fill(feature)
                    except PlmlabelError as exc:
                        self.problems.append(str(exc))
                if self.advance:
                    self.advance()
                yield feature
        if self.problems and self.warn:
            self.warn(f"{len(self.problems)} feature(s) have no examples ({self.problems[0].rstrip('.')}).")


def load_export_feature(ws: Workspace, db: Any, sae_id: str, feature: int, *,
                        reader: ExampleReader | None = None) -> ExportFeature | None:
    """One labeled feature as its page shows it (examples from the index when it can be read), or None
    when the feature has no ok label. `serve` passes a long-lived `reader` (it caches proteins)."""
    found = next(iter_export_features(db, sae_id, only=[int(feature)]), None)
    if found is None:
        return None
    with contextlib.suppress(PlmlabelError):  # the page then says there are no examples
        (reader or ExampleReader(ws, db, sae_id)).fill(found)
    return found


def attach_examples(ws: Workspace, db: Any, bundle: ExportBundle,
                    advance: Callable[[], None] | None = None) -> list[str]:
    """Fill each feature of a loaded bundle from the activation index; returns why features had none."""
    reader = ExampleReader(ws, db, bundle.sae.sae_id)
    problems: list[str] = []
    for feature in bundle.features:
        try:
            reader.fill(feature)
        except PlmlabelError as exc:
            problems.append(str(exc))
        if advance:
            advance()
    bundle.has_examples = True
    return problems


def index_problem(ws: Workspace, sae_id: str) -> str | None:
    """Why the SAE's activation index cannot be read, or None when it can."""
    try:
        open_index(ws, sae_id)
    except PlmlabelError as exc:
        return str(exc)
    return None


def gather_bundle(ws: Workspace, db: Any, sae_id: str, fmt: str, *, validated_only: bool = False,
                  warn: Callable[[str], None] | None = None,
                  advance: Callable[[], None] | None = None) -> ExportBundle:
    """The labels of `sae_id` as a streaming bundle, with example sequences when `fmt` shows them and
    the index exists. The features are read when the writer iterates them (see FeatureStream)."""
    sae = export_sae(db, sae_id)
    with_examples = False
    if fmt in WITH_EXAMPLES:
        problem = index_problem(ws, sae_id)
        if problem:
            if warn:
                warn(f"{problem.rstrip('.')}; exporting labels without example sequences.")
        else:
            with_examples = True
    stream = FeatureStream(ws, sae_id, validated_only=validated_only, with_examples=with_examples,
                           n_features=count_export_features(db, sae_id, validated_only=validated_only),
                           advance=advance, warn=warn)
    # model_construct keeps the stream a stream (validation would read it into a list)
    return ExportBundle.model_construct(sae=sae, features=stream, has_examples=with_examples)
