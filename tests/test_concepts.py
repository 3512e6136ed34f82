"""InterPLM's concept F1 protocol: vocabulary, counting (checked by brute force), planted features."""

from __future__ import annotations

import numpy as np
import pytest

from sae.concept_vocab import AA_PREFIX, ConceptVocabulary, concept_names, subtype
from sae.concepts import TEST, THRESHOLDS, VALID, ConceptCounter, f1_scores, score, split_of
from storage.protein import Protein, ProteinFeature
from tests.index_fixtures import sample_proteins


def _feature(type_: str, start: int, end: int, **kw) -> ProteinFeature:
    return ProteinFeature(type=type_, start=start, end=end, **kw)


@pytest.mark.parametrize(("feature", "expected"), [
    (_feature("Zinc finger", 1, 20, description="C2H2-type 3"), "C2H2-type"),
    (_feature("Zinc finger", 1, 20, description="C2H2-type 4; degenerate"), "C2H2-type"),
    (_feature("Modified residue", 5, 5, description="Phosphoserine; by PKA"), "Phosphoserine"),
    (_feature("Binding site", 5, 5, ligand="Zn(2+)", description="catalytic"), "Zn(2+)"),
    (_feature("Repeat", 5, 40, description="WD 7"), "WD"),
    (_feature("Helix", 5, 9), None),
])
def test_subtypes_pool_numbered_instances(feature: ProteinFeature, expected: str | None) -> None:
    assert subtype(feature) == expected


def test_concept_names_skip_uninformative_types() -> None:
    assert concept_names(_feature("Chain", 1, 100)) == []
    assert concept_names(_feature("Natural variant", 3, 3, description="in dbSNP")) == []
    assert concept_names(_feature("Domain", 1, 50, description="SH3")) == ["Domain", "Domain: SH3"]


def _protein(accession: str, sequence: str, *features: ProteinFeature) -> Protein:
    return Protein(accession=accession, length=len(sequence), sequence=sequence, features=features)


def test_vocabulary_keeps_frequent_concepts_and_all_amino_acids() -> None:
    proteins = [
        _protein("A", "MCKLV" * 10, _feature("Domain", 1, 20, description="SH3"), _feature("Helix", 3, 9)),
        _protein("B", "MCKLV" * 10, _feature("Domain", 5, 25, description="SH3")),
        _protein("C", "MCKLV" * 10, _feature("Domain", 5, 25, description="PDZ 1")),
    ]
    vocabulary = ConceptVocabulary.build(proteins, min_proteins=2)
    names = [c.name for c in vocabulary.concepts]
    assert names[:2] == ["Domain", "Domain: SH3"]
    assert "Helix" not in names and "Domain: PDZ" not in names
    assert names[2:] == [AA_PREFIX + aa for aa in "ACDEFGHIKLMNPQRSTVWY"]
    assert vocabulary.concepts[0].n_proteins == 3


def test_disulfide_is_one_instance_on_two_residues() -> None:
    protein = _protein("A", "ACCCCCCCCA", _feature("Disulfide bond", 2, 9))
    vocabulary = ConceptVocabulary.build([protein], min_proteins=1)
    concepts = vocabulary.annotate(protein)
    bond = vocabulary.index["Disulfide bond"]
    assert concepts.residues_of(bond).tolist() == [1, 8]
    assert concepts.inst_concept.tolist() == [bond]


def _reference(proteins, vocabulary, activations, splits):
    """Counts by plain loops over residues, instances and thresholds."""
    k, f, t = len(vocabulary), activations[0].shape[1], len(THRESHOLDS)
    tp = np.zeros((2, k, f, t), dtype=np.int64)
    hits = np.zeros((2, k, f, t), dtype=np.int64)
    fires = np.zeros((2, f, t), dtype=np.int64)
    for protein, acts, split in zip(proteins, activations, splits, strict=True):
        concepts = vocabulary.annotate(protein)
        for ti, threshold in enumerate(THRESHOLDS):
            firing = acts > threshold
            fires[split, :, ti] += firing.sum(axis=0)
            for c in range(k):
                members = concepts.residues_of(c)
                tp[split, c, :, ti] += firing[members].sum(axis=0)
            for feature in protein.features:
                for name in concept_names(feature):
                    c = vocabulary.index.get(name)
                    if c is None or vocabulary.concepts[c].kind != "region":
                        continue
                    if feature.type == "Disulfide bond":
                        residues = [feature.start - 1, feature.end - 1]
                    else:
                        residues = list(range(feature.start - 1, feature.end))
                    hits[split, c, :, ti] += firing[residues].any(axis=0)
    return tp, hits, fires


def test_counts_match_a_brute_force_reference() -> None:
    rng = np.random.default_rng(0)
    proteins = []
    for i in range(12):
        length = int(rng.integers(40, 90))
        sequence = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=length))
        features = [_feature("Domain", 3, 30, description="SH3"),
                    _feature("Domain", 20, 40, description="SH3"),
                    _feature("Helix", 5, 12), _feature("Helix", 33, 36),
                    _feature("Binding site", 7, 7, ligand="ATP"),
                    _feature("Binding site", 21, 23, ligand="ATP"),
                    _feature("Disulfide bond", 2, length - 1)]
        proteins.append(_protein(f"P{i}", sequence, *features[: int(rng.integers(1, len(features) + 1))]))
    vocabulary = ConceptVocabulary.build(proteins, min_proteins=1)
    activations = [np.where(rng.random((p.length, 6)) < 0.3, rng.random((p.length, 6)), 0.0)
                   for p in proteins]
    splits = [i % 2 for i in range(len(proteins))]
    counter = ConceptCounter(len(vocabulary), 6)
    for protein, acts, split in zip(proteins, activations, splits, strict=True):
        counter.add(acts, vocabulary.annotate(protein), split)
    counts = counter.result()
    tp, hits, fires = _reference(proteins, vocabulary, activations, splits)
    np.testing.assert_array_equal(counts.fires, fires)
    np.testing.assert_array_equal(counts.tp, tp)
    region = np.array([c.kind == "region" for c in vocabulary.concepts])
    np.testing.assert_array_equal(counts.hits[:, region], hits[:, region])
    precision, recall, f1 = f1_scores(counts, vocabulary.kinds)
    assert ((f1 >= 0) & (f1 <= 1)).all() and ((precision >= 0) & (precision <= 1)).all()
    # region concepts recall per instance, residue concepts per residue
    helix, atp = vocabulary.index["Helix"], vocabulary.index["Binding site: ATP"]
    np.testing.assert_allclose(recall[VALID, helix], hits[VALID, helix] / counts.instances[VALID, helix])
    np.testing.assert_allclose(recall[TEST, atp], tp[TEST, atp] / counts.positives[TEST, atp])


def test_split_is_seeded_and_independent_of_order() -> None:
    accessions = [f"P{i:04d}" for i in range(100)]
    a = split_of(accessions, seed=1)
    assert a == split_of(list(reversed(accessions)), seed=1)
    assert a != split_of(accessions, seed=2)
    assert sum(v == VALID for v in a.values()) == 50


def _planted(proteins, vocabulary, concepts, rng):
    """Features 0..n-1 fire exactly on the residues of `concepts` (strong), plus weak noise everywhere."""
    out = []
    for protein in proteins:
        annotated = vocabulary.annotate(protein)
        acts = np.where(rng.random((protein.length, len(concepts))) < 0.02,
                        rng.uniform(0.0, 0.1, (protein.length, len(concepts))), 0.0)
        for f, name in enumerate(concepts):
            residues = annotated.residues_of(vocabulary.index[name])
            acts[residues, f] = rng.uniform(0.5, 1.0, len(residues))
        out.append((annotated, acts))
    return out


def test_planted_features_find_their_concepts_and_shuffled_ones_do_not(swissprot_dir) -> None:
    proteins = list(sample_proteins(swissprot_dir))
    vocabulary = ConceptVocabulary.build(proteins, min_proteins=10)
    planted = ["Zinc finger", "Transmembrane"]
    rng = np.random.default_rng(0)
    items = _planted(proteins, vocabulary, planted, rng)
    # shuffled twins: the same values, permuted over all residues of all proteins
    stacked = np.concatenate([a for _, a in items])
    shuffled = np.split(stacked[rng.permutation(len(stacked))], np.cumsum([len(a) for _, a in items])[:-1])
    mixed = [(c, np.concatenate([a, s], axis=1)) for (c, a), s in zip(items, shuffled, strict=True)]
    split = split_of([p.accession for p in proteins], seed=0)
    counter = ConceptCounter(len(vocabulary), 4)
    for (concepts, acts), protein in zip(mixed, proteins, strict=True):
        counter.add(acts, concepts, split[protein.accession])
    counts = counter.result()
    report = score(counts, vocabulary)
    by_concept = {r.concept: r for r in report.concepts}
    for feature, name in enumerate(planted):
        assert by_concept[name].feature == feature
        assert by_concept[name].f1_test > 0.9
    # even at its best threshold on test, a shuffled twin stays far from its concept
    _, _, f1 = f1_scores(counts, vocabulary.kinds)
    for feature, name in enumerate(planted, start=len(planted)):
        assert f1[TEST, vocabulary.index[name], feature].max() < 0.2
    assert report.n_concepts_f1_above >= 2 and report.n_features_f1_above >= 2
