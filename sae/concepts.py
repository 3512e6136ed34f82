"""Swiss-Prot concept association: InterPLM's F1 protocol on one SAE's features.

For every (feature, concept, threshold), with activations normalised by the feature's max over the
index and a residue "firing" when its normalised activation is above the threshold:

    precision = firing residues inside the concept / all firing residues        (per residue)
    recall    = region concepts: instances with at least one firing residue / instances
                residue and amino-acid concepts: firing concept residues / concept residues
    F1        = 2 P R / (P + R)

Proteins are split (seeded) into valid and test; each concept's best (feature, threshold) is chosen
on valid and reported on test, and each feature's concepts get their threshold from valid too, so no
reported number is the one it was selected on. Counts accumulate chunk by chunk (`ConceptCounter`),
with every span count read off prefix sums of the thresholded activations, so the activations of all
proteins are never held at once and the work is vectorised over features and thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from sae.concept_vocab import ConceptVocabulary, ProteinConcepts
from sae.stream import StreamOptions
from storage.db import Database
from storage.errors import InputError, NotFoundError
from storage.workspace import Workspace

THRESHOLDS: tuple[float, ...] = (0.0, 0.15, 0.5, 0.6, 0.8)
VALID, TEST = 0, 1
_ONE = np.int32(1)  # np.add.at takes its fast path only when the value has the table's type


# --- counting -----------------------------------------------------------------------------------------


@dataclass
class ConceptCounts:
    """Accumulated counts; the leading axis is the split (VALID, TEST), the last the threshold."""

    tp: np.ndarray  # int64 [2, K, F, T] firing residues inside the concept
    hits: np.ndarray  # int64 [2, K, F, T] region instances with a firing residue
    fires: np.ndarray  # int64 [2, F, T] firing residues
    positives: np.ndarray  # int64 [2, K] residues in the concept
    instances: np.ndarray  # int64 [2, K] region instances
    proteins: np.ndarray  # int64 [2, K] proteins carrying the concept
    n_proteins: np.ndarray  # int64 [2]
    n_residues: np.ndarray  # int64 [2]


def _to_at_least(by_level: np.ndarray) -> np.ndarray:
    """Counts by exact level [..., T] (slot l: level l + 1) -> counts at level >= t + 1 per threshold t
    [..., T], in place."""
    for slot in range(by_level.shape[-1] - 1, 0, -1):
        by_level[..., slot - 1] += by_level[..., slot]
    return by_level


class ConceptCounter:
    """Feed (normalised activations [L, F], ProteinConcepts, split) per protein; read `result()`.

    Only the non-zero activations are touched: each gets its level (how many thresholds it is
    above), is joined with the concepts and instances covering its residue, and is counted by
    (concept, feature, level) with `np.add.at`. The cost follows the SAE's sparsity, not F x T.
    The two [2, K, F, T] tables are the only memory that grows (with features x concepts); they
    are int32, so one split may hold up to 2**31 residues. Level 0 (above no threshold) is never
    reported, so it is not counted: slot l of a table holds level l + 1.
    """

    def __init__(self, n_concepts: int, n_features: int, thresholds: tuple[float, ...] = THRESHOLDS) -> None:
        self.n_concepts, self.n_features = n_concepts, n_features
        self.thresholds = np.asarray(sorted(thresholds), dtype=np.float32)
        levels = len(thresholds)
        self._tp = np.zeros((2, n_concepts, n_features, levels), dtype=np.int32)
        self._hits = np.zeros((2, n_concepts, n_features, levels), dtype=np.int32)
        self._fires = np.zeros((2, n_features, levels), dtype=np.int64)
        self._positives = np.zeros((2, n_concepts), dtype=np.int64)
        self._instances = np.zeros((2, n_concepts), dtype=np.int64)
        self._proteins = np.zeros((2, n_concepts), dtype=np.int64)
        self._n_proteins = np.zeros(2, dtype=np.int64)
        self._n_residues = np.zeros(2, dtype=np.int64)
        self._counts: ConceptCounts | None = None

    def add(self, activations: np.ndarray, concepts: ProteinConcepts, split: int,
            scale: np.ndarray | None = None) -> None:
        """Count one protein; `scale` [F] (> 0) normalises the activations (only the non-zero ones are
        divided, the same numbers as dividing the whole array first)."""
        n_f, levels = self.n_features, len(self.thresholds)
        acts = np.asarray(activations, dtype=np.float32)
        if acts.ndim != 2 or acts.shape[1] != n_f or len(acts) < concepts.length:
            raise ValueError(f"activations of shape {acts.shape} do not fit {concepts.length} residues x "
                             f"{n_f} features")
        acts = acts[: concepts.length]
        if self._counts is not None:
            raise RuntimeError("the counts were already read")
        if self._n_residues[split] + concepts.length >= np.iinfo(np.int32).max:
            raise ValueError("more than 2**31 residues in one split")
        self._n_proteins[split] += 1
        self._n_residues[split] += concepts.length
        np.add.at(self._positives[split], concepts.res_concept, 1)
        aa = concepts.amino_acid[concepts.amino_acid >= 0]
        np.add.at(self._positives[split], aa, 1)
        np.add.at(self._instances[split], concepts.inst_concept, 1)
        self._proteins[split, concepts.concepts_present()] += 1

        flat = np.flatnonzero(acts > 0)  # 1-D: several times faster than a 2-D np.nonzero
        residue, feature = np.divmod(flat, n_f)
        values = acts.reshape(-1)[flat]
        if scale is not None:
            values = values / scale[feature]
        level = np.searchsorted(self.thresholds, values, side="left")
        if len(level) and level.min() == 0:  # above no threshold (only when the lowest is above 0)
            keep = level > 0
            residue, feature, level = residue[keep], feature[keep], level[keep]
        fl = feature * levels + level - 1  # (feature, level) cell
        np.add.at(self._fires[split].reshape(-1), fl, 1)
        tp = self._tp[split].reshape(-1)
        cell = n_f * levels
        # amino acids: exactly one per residue
        aa_of = concepts.amino_acid[residue]
        known = aa_of >= 0
        np.add.at(tp, aa_of[known] * cell + fl[known], _ONE)
        # other concepts covering the residue
        src, concept = _join(residue, concepts.res_ptr, concepts.res_concept)
        np.add.at(tp, concept * cell + fl[src], _ONE)
        # region instances: the highest level reached anywhere in the instance counts once
        if concepts.n_instances:
            src, inst = _join(residue, concepts.inst_ptr, concepts.inst_id)
            best = np.zeros(concepts.n_instances * n_f, dtype=np.int8)
            np.maximum.at(best, inst * n_f + feature[src], level[src].astype(np.int8))
            reached = np.flatnonzero(best)
            inst_of, feat_of = np.divmod(reached, n_f)
            np.add.at(self._hits[split].reshape(-1),
                      concepts.inst_concept[inst_of] * cell + feat_of * levels + best[reached] - 1, _ONE)

    def export(self) -> dict[str, np.ndarray]:
        """The raw counts, sparse (what a Ray worker sends back for its block); see `merge`."""
        out: dict[str, np.ndarray] = {}
        for name in ("_tp", "_hits", "_fires"):
            flat = getattr(self, name).reshape(-1)
            index = np.flatnonzero(flat)
            out[name + "_index"], out[name + "_value"] = index, flat[index]
        for name in ("_positives", "_instances", "_proteins", "_n_proteins", "_n_residues"):
            out[name] = getattr(self, name)
        return out

    def merge(self, part: dict[str, np.ndarray]) -> None:
        """Add the counts `export` gave (integer sums: the merge order does not matter)."""
        if self._counts is not None:
            raise RuntimeError("the counts were already read")
        for name in ("_tp", "_hits", "_fires"):
            getattr(self, name).reshape(-1)[part[name + "_index"]] += part[name + "_value"]
        for name in ("_positives", "_instances", "_proteins", "_n_proteins", "_n_residues"):
            getattr(self, name)[...] += part[name]

    def result(self) -> ConceptCounts:
        """The counts per threshold (computed in place, once; no more `add` after this)."""
        if self._counts is None:
            self._counts = ConceptCounts(
                tp=_to_at_least(self._tp), hits=_to_at_least(self._hits), fires=_to_at_least(self._fires),
                positives=self._positives, instances=self._instances, proteins=self._proteins,
                n_proteins=self._n_proteins, n_residues=self._n_residues,
            )
        return self._counts


def _join(rows: np.ndarray, ptr: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry i of `rows`, every value in CSR row rows[i]: (i repeated, value) pairs."""
    counts = ptr[rows + 1] - ptr[rows]
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    src = np.repeat(np.arange(len(rows)), counts)
    first = np.repeat(ptr[rows] - (np.cumsum(counts) - counts), counts)
    return src, values[first + np.arange(total)]


# --- scoring ------------------------------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape), dtype=np.float32)
    np.divide(num, den, out=out, where=den > 0)
    return out


def f1_scores(counts: ConceptCounts, kinds: np.ndarray, concepts: slice = slice(None),
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) of the concepts in `concepts`, each float32 [2, K, F, T]."""
    tp = counts.tp[:, concepts]
    precision = _ratio(tp, counts.fires[:, None, :, :])
    per_residue = (np.asarray(kinds) != "region")[concepts]
    recall = np.where(per_residue[None, :, None, None],
                      _ratio(tp, counts.positives[:, concepts, None, None]),
                      _ratio(counts.hits[:, concepts], counts.instances[:, concepts, None, None]))
    f1 = np.zeros_like(precision)
    total = precision + recall
    np.divide(2 * precision * recall, total, out=f1, where=total > 0)
    return precision, recall, f1


class ConceptResult(BaseModel):
    """A concept's best feature: chosen on valid, scored on test."""

    concept: str
    kind: str
    n_proteins: int  # carrying the concept, both splits
    feature: int | None
    threshold: float | None
    f1_valid: float | None
    precision_test: float | None
    recall_test: float | None
    f1_test: float | None  # None where the test split has no instance of the concept


class FeatureConceptResult(BaseModel):
    feature: int
    concept: str
    kind: str
    rank: int
    threshold: float
    f1_valid: float
    f1_test: float | None
    precision_test: float | None
    recall_test: float | None


class ConceptReport(BaseModel):
    sae_id: str | None = None
    thresholds: tuple[float, ...]
    n_features: int
    n_proteins_valid: int
    n_proteins_test: int
    concepts: list[ConceptResult]  # biology, by test F1
    amino_acids: list[ConceptResult]  # reported apart
    feature_concepts: list[FeatureConceptResult]  # each feature's top concepts
    n_concepts_f1_above: int  # concepts whose best feature has test F1 > f1_cutoff
    n_features_f1_above: int  # features with some concept at test F1 > f1_cutoff
    f1_cutoff: float = 0.5
    seed: int | None = None
    min_proteins: int | None = None


def _opt(value: float, present: bool) -> float | None:
    return round(float(value), 4) if present else None


def score(counts: ConceptCounts, vocabulary: ConceptVocabulary, *, thresholds: tuple[float, ...] = THRESHOLDS,
          top_k: int = 5, min_f1: float = 0.1, f1_cutoff: float = 0.5) -> ConceptReport:
    """Best (feature, threshold) per concept on valid, reported on test; top concepts per feature.

    Works through the concepts in blocks, so scoring needs little beyond the [K, F] results.
    """
    kinds = vocabulary.kinds
    n_k, n_f, n_t = counts.tp.shape[1:]
    per_residue = kinds != "region"
    present = np.where(per_residue[None, :], counts.positives, counts.instances) > 0  # [2, K]
    best = np.zeros(n_k, dtype=np.int64)  # flat (feature, threshold) chosen on valid, per concept
    best_scores = np.zeros((4, n_k), dtype=np.float32)  # f1 valid, precision / recall / f1 test
    t_best = np.zeros((n_k, n_f), dtype=np.int64)  # per (concept, feature): threshold chosen on valid
    pair = np.zeros((4, n_k, n_f), dtype=np.float32)  # f1 valid, f1 / precision / recall test
    block = max(1, (1 << 22) // max(2 * n_f * n_t, 1))
    for k0 in range(0, n_k, block):
        ks = slice(k0, min(k0 + block, n_k))
        precision, recall, f1 = f1_scores(counts, kinds, ks)
        flat = f1[VALID].reshape(len(range(n_k)[ks]), n_f * n_t)
        best[ks] = flat.argmax(axis=1)
        f, t = np.divmod(best[ks], n_t)
        rows = np.arange(len(f))
        best_scores[:, ks] = [flat[rows, best[ks]], precision[TEST][rows, f, t], recall[TEST][rows, f, t],
                              f1[TEST][rows, f, t]]
        t_best[ks] = f1[VALID].argmax(axis=2)
        for i, table in enumerate((f1[VALID], f1[TEST], precision[TEST], recall[TEST])):
            pair[i, ks] = np.take_along_axis(table, t_best[ks][..., None], axis=2)[..., 0]

    results: dict[str, list[ConceptResult]] = {"concepts": [], "amino_acids": []}
    for c, concept in enumerate(vocabulary.concepts):
        has_valid, has_test = bool(present[VALID, c]), bool(present[TEST, c])
        f, t = divmod(int(best[c]), n_t)
        chosen = has_valid and best_scores[0, c] > 0
        item = ConceptResult(
            concept=concept.name, kind=concept.kind, n_proteins=int(counts.proteins[:, c].sum()),
            feature=f if chosen else None, threshold=thresholds[t] if chosen else None,
            f1_valid=_opt(best_scores[0, c], has_valid),
            precision_test=_opt(best_scores[1, c], chosen and has_test),
            recall_test=_opt(best_scores[2, c], chosen and has_test),
            f1_test=_opt(best_scores[3, c], chosen and has_test),
        )
        results["amino_acids" if concept.kind == "amino_acid" else "concepts"].append(item)
    for items in results.values():
        items.sort(key=lambda r: (-(r.f1_test or 0.0), -(r.f1_valid or 0.0), r.concept))

    f1_valid, f1_test, prec_test, rec_test = pair
    biology = kinds != "amino_acid"
    chosen = (present[VALID] & present[TEST])[:, None]  # a threshold was chosen, and can be tested
    strong = (f1_test > f1_cutoff) & chosen & biology[:, None]  # [K, F]
    feature_concepts: list[FeatureConceptResult] = []
    eligible = np.where(present[VALID][:, None] & (f1_valid >= min_f1), f1_valid, -1.0)
    for f in np.flatnonzero((eligible >= 0).any(axis=0)).tolist():
        order = np.lexsort((np.arange(n_k), -eligible[:, f]))[:top_k]
        for rank, c in enumerate((c for c in order.tolist() if eligible[c, f] >= 0), start=1):
            ok = bool(present[TEST, c])
            feature_concepts.append(FeatureConceptResult(
                feature=f, concept=vocabulary.concepts[c].name, kind=vocabulary.concepts[c].kind, rank=rank,
                threshold=thresholds[int(t_best[c, f])], f1_valid=round(float(f1_valid[c, f]), 4),
                f1_test=_opt(f1_test[c, f], ok), precision_test=_opt(prec_test[c, f], ok),
                recall_test=_opt(rec_test[c, f], ok)))
    return ConceptReport(
        thresholds=thresholds, n_features=n_f,
        n_proteins_valid=int(counts.n_proteins[VALID]), n_proteins_test=int(counts.n_proteins[TEST]),
        concepts=results["concepts"], amino_acids=results["amino_acids"], feature_concepts=feature_concepts,
        n_concepts_f1_above=sum(1 for r in results["concepts"] if (r.f1_test or 0.0) > f1_cutoff),
        n_features_f1_above=int(strong.any(axis=0).sum()), f1_cutoff=f1_cutoff,
    )


def split_of(accessions: Iterable[str], seed: int, valid_fraction: float = 0.5) -> dict[str, int]:
    """A seeded valid/test split of proteins (independent of their order)."""
    ordered = sorted(set(accessions))
    permuted = np.random.default_rng([seed, 7]).permutation(len(ordered))
    n_valid = int(round(len(ordered) * valid_fraction))
    return {ordered[i]: (VALID if rank < n_valid else TEST) for rank, i in enumerate(permuted.tolist())}


def evaluate(items: Iterable[tuple[ProteinConcepts, np.ndarray, int]], vocabulary: ConceptVocabulary,
             n_features: int, *, thresholds: tuple[float, ...] = THRESHOLDS, top_k: int = 5,
             min_f1: float = 0.1, progress: Callable[[int], None] | None = None) -> ConceptReport:
    """Count and score (ProteinConcepts, normalised activations [L, F], split) triples."""
    counter = ConceptCounter(len(vocabulary), n_features, thresholds)
    done = 0
    for concepts, activations, split in items:
        counter.add(activations, concepts, split)
        done += concepts.length
        if progress:
            progress(done)
    return score(counter.result(), vocabulary, thresholds=thresholds, top_k=top_k, min_f1=min_f1)


# --- on a workspace -------------------------------------------------------------------------------------


def evaluate_sae_concepts(workspace: Workspace, sae_id: str, *, min_proteins: int = 10,
                          seed: int | None = None, valid_fraction: float = 0.5, top_k: int = 5,
                          min_f1: float = 0.1, progress: Callable[[int, int], None] | None = None,
                          device: str | None = None, max_elements: int | None = None,
                          stream: StreamOptions | None = None) -> ConceptReport:
    """Run the F1 protocol over the indexed proteins of `sae_id` (needs `plmlabel index` first).

    Activations are recomputed chunk by chunk from the embeddings (a store, or ESM-2 on the fly as
    `stream` says; see sae/stream.py) and normalised by each feature's max over the index; nothing
    is written (see `store_concepts`). `progress(done, total)` counts residues (cumulative).
    """
    from sae.activations import DEFAULT_MAX_ELEMENTS, limit_heap_fragmentation, sae_encoder
    from sae.index import open_index, sae_directory
    from sae.model import load_sae
    from sae.plm import resolve_device
    from sae.stream import open_source
    from storage.proteins import get_proteins, iter_proteins
    from storage.saes import get_sae

    if min_proteins < 1:
        raise InputError("min_proteins must be at least 1.")
    if not 0 < valid_fraction < 1:
        raise InputError("valid_fraction must lie between 0 and 1.")
    workspace.require()
    limit_heap_fragmentation()
    settings = workspace.load_config()
    seed = settings.index.seed if seed is None else seed
    with workspace.db() as db:
        record = get_sae(db, sae_id)
        reader = open_index(workspace, sae_id, record=record)
        accessions = reader.accessions()
        vocabulary = ConceptVocabulary.build(iter_proteins(db, accessions), min_proteins)
        split = split_of(accessions, seed, valid_fraction)
        feature_max = reader.all_stats()["feature_max"]
        scale = np.where(feature_max > 0, feature_max, 1.0).astype(np.float32)
        sae = load_sae(sae_directory(workspace, record), device=resolve_device(device or settings.plm.device))
        opened = open_source(workspace, record, sae.d_in, set(accessions), accessions,
                             stream or StreamOptions(), device or settings.plm.device)
        counter = ConceptCounter(len(vocabulary), sae.d_sae)

        def annotate(pairs: list[tuple[str, int]]) -> dict[str, tuple[ProteinConcepts, int]]:
            proteins = get_proteins(db, [accession for accession, _ in pairs])
            out = {}
            for accession, length in pairs:
                protein = proteins.get(accession)
                if protein is None:
                    raise NotFoundError(f"protein {accession} of the index is no longer in the database; "
                                        f"rebuild with `plmlabel index {sae_id}`.")
                out[accession] = (vocabulary.annotate(protein, length), split[accession])
            return out

        done = 0
        max_elements = max_elements or DEFAULT_MAX_ELEMENTS
        if stream is not None and stream.ray:
            from sae.concepts_ray import count_on_ray

            parts = count_on_ray(opened, stream, sae, sae_directory(workspace, record), max_elements, scale,
                                 len(vocabulary), set(accessions), annotate)
            for part, residues in parts:
                counter.merge(part)
                done += residues
                if progress:
                    progress(done, reader.n_residues)
        else:
            encode = sae_encoder(sae)
            for block in opened.source.blocks(set(accessions)):
                done += count_block(counter, block, encode, sae.d_sae, max_elements, scale, annotate)
                if progress:
                    progress(done, reader.n_residues)
    report = score(counter.result(), vocabulary, top_k=top_k, min_f1=min_f1)
    return report.model_copy(update={"sae_id": sae_id, "seed": seed, "min_proteins": min_proteins})


def count_block(counter: ConceptCounter, items: list[tuple[str, np.ndarray]], encode: Callable, d_sae: int,
                max_elements: int, scale: np.ndarray,
                annotate: Callable[[list[tuple[str, int]]], dict[str, tuple[ProteinConcepts, int]]]) -> int:
    """Encode one block of (accession, embeddings) chunk by chunk and count it; returns its residues."""
    from sae.activations import encode_chunks

    done = 0
    for chunk in encode_chunks(items, encode, d_sae, max_elements):
        info = annotate(list(zip(chunk.accessions, np.diff(chunk.offsets).tolist(), strict=True)))
        for accession, acts in chunk:
            concepts, split = info[accession]
            counter.add(acts, concepts, split, scale)
        done += len(chunk.activations)
    return done


def store_concepts(db: Database, report: ConceptReport) -> int:
    """Replace the stored concept associations of the report's SAE; returns the rows written."""
    from storage.features_store import FeatureConcept, write_feature_concepts

    if report.sae_id is None:
        raise ValueError("the report names no SAE")
    rows = [FeatureConcept(**item.model_dump()) for item in report.feature_concepts]
    write_feature_concepts(db, report.sae_id, rows, report.n_features)
    return len(rows)
