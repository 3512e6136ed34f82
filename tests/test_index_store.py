"""storage.features_store: feature statistics and concept associations in the database."""

from __future__ import annotations

import pytest

from storage.db import Database
from storage.features_store import (
    FeatureConcept,
    FeatureStats,
    get_feature_concepts,
    get_feature_stats,
    get_top_concepts,
    list_feature_stats,
    write_feature_concepts,
    write_feature_stats,
)
from storage.saes import SaeRecord, record_sae


@pytest.fixture
def db() -> Database:
    database = Database.open(":memory:")
    record_sae(database, SaeRecord(sae_id="s", architecture="relu", d_in=4, d_sae=3, path="saes/s",
                                   weights_hash="h", source="trained"))
    return database


def _stats(n: int, index_hash: str = "i1") -> list[FeatureStats]:
    return [FeatureStats(sae_id="s", feature=f, max_activation=float(f + 1), frac_residues=0.1,
                         frac_proteins=0.5, quantiles=(0.0, 1.0), index_hash=index_hash) for f in range(n)]


def _concept(feature: int, concept: str, rank: int, kind: str = "region") -> FeatureConcept:
    return FeatureConcept(feature=feature, concept=concept, rank=rank, threshold=0.5, f1_valid=0.8,
                          f1_test=0.7, precision_test=0.9, recall_test=0.6, kind=kind)


def test_stats_round_trip(db) -> None:
    write_feature_stats(db, _stats(3))
    got = get_feature_stats(db, "s", 2)
    assert got is not None and got.max_activation == 3.0 and got.quantiles == (0.0, 1.0)
    assert got.index_hash == "i1" and got.top_concepts == ()
    assert get_feature_stats(db, "s", 7) is None


def test_concepts_replace_and_reach_the_summary(db) -> None:
    write_feature_stats(db, _stats(3))
    concepts = [_concept(0, "Zinc finger", 1), _concept(0, "Amino acid: C", 2, "amino_acid"),
                _concept(2, "Helix", 1)]
    write_feature_concepts(db, "s", concepts, n_features=3)
    top = get_top_concepts(db, "s", 0)
    assert [c["concept"] for c in top] == ["Zinc finger", "Amino acid: C"]
    assert top[1]["kind"] == "amino_acid" and top[0]["f1_test"] == 0.7
    assert get_top_concepts(db, "s", 1) == []
    rows = get_feature_concepts(db, "s", 0)
    assert [(r.concept, r.kind) for r in rows] == [("Zinc finger", "region"), ("Amino acid: C", "amino_acid")]
    write_feature_concepts(db, "s", [_concept(1, "Transmembrane", 1)], n_features=3)
    assert get_top_concepts(db, "s", 0) == [] and get_top_concepts(db, "s", 2) == []
    assert [r.feature for r in get_feature_concepts(db, "s")] == [1]
    assert get_feature_stats(db, "s", 1).max_activation == 2.0  # statistics untouched


def test_reindexing_keeps_concepts_only_for_the_same_weights(db) -> None:
    write_feature_stats(db, _stats(3))
    write_feature_concepts(db, "s", [_concept(0, "Zinc finger", 1)], n_features=3)
    write_feature_stats(db, _stats(3, index_hash="i2"), keep_concepts=True)
    assert get_top_concepts(db, "s", 0)[0]["concept"] == "Zinc finger"
    assert {s.index_hash for s in list_feature_stats(db, "s")} == {"i2"}
    write_feature_stats(db, _stats(2, index_hash="i3"), keep_concepts=False)
    assert get_top_concepts(db, "s", 0) == [] and get_feature_concepts(db, "s") == []
    assert [s.feature for s in list_feature_stats(db, "s")] == [0, 1]  # feature 2 is gone
