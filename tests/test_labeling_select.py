"""`label --select informative`: which features it picks, in which order, and why (unit and CLI)."""

from __future__ import annotations

import math
import random

import pytest

from agent.labeling.informative import MIN_PROTEINS, FeatureProfile, activation_spread, rank_informative
from agent.labeling.selection import FeatureSelection, plan_features
from storage.errors import InputError
from storage.features_store import FeatureConcept, FeatureStats, write_feature_concepts, write_feature_stats
from storage.saes import SaeRecord, record_sae

N = 300
FLAT = tuple(float(q) for q in [1.0] * 11)  # every firing protein at the feature's max
UNIFORM = tuple(q / 10 for q in range(11))  # firing maxima spread evenly over 0..1


def test_spread_is_the_sd_of_the_normalised_per_protein_max():
    # on/off at full strength on a fraction f of the proteins: a Bernoulli SD
    for f in (0.1, 0.5, 0.8):
        assert activation_spread(f, 1.0, FLAT) == pytest.approx(math.sqrt(f * (1 - f)))
    assert activation_spread(1.0, 1.0, FLAT) == pytest.approx(0.0, abs=1e-6)  # always on, always alike
    assert activation_spread(1.0, 2.0, tuple(2 * q for q in UNIFORM)) == pytest.approx(1 / math.sqrt(12))
    assert activation_spread(0.0, 0.0, ()) == 0.0 and activation_spread(0.5, 1.0, ()) == 0.0


def _profiles() -> list[FeatureProfile]:
    return [
        FeatureProfile(0, 0.0, 0.0),  # dead
        FeatureProfile(1, 3.0, 1.0, FLAT, "Domain X", 0.9),  # fires everywhere: left out despite its F1
        FeatureProfile(2, 3.0, 10 / N, FLAT, "Zinc finger", 0.95),  # 10 proteins: too few to hold out
        FeatureProfile(3, 2.0, 0.3, UNIFORM, "Transmembrane", 0.6),
        FeatureProfile(4, 2.0, 0.2, FLAT, "Signal", 0.8),
        FeatureProfile(5, 1.0, 0.5, FLAT),  # no concept, the widest spread
        FeatureProfile(6, 1.0, 0.2, UNIFORM, "Weak", 0.3),  # an association below MIN_F1 counts as none
        FeatureProfile(7, 1.0, 0.5, FLAT),  # ties with 5: the lower id first
        FeatureProfile(8, 1.0, 0.95, UNIFORM),  # nearly every protein
    ]


def test_ranking_leaves_out_dead_rare_and_universal_and_puts_concepts_first():
    ranking = rank_informative(_profiles(), n_indexed=N)
    assert [p.feature for p in ranking.picks] == [4, 3, 5, 7, 6]
    assert [p.by for p in ranking.picks] == ["concept", "concept", "spread", "spread", "spread"]
    assert (ranking.n_features, ranking.n_dead, ranking.n_rare, ranking.n_universal) == (9, 1, 1, 2)
    assert ranking.picks[0].reason.startswith("concept 'Signal' at test F1 0.80; fires on 20% of proteins")
    assert ranking.picks[2].reason == "no concept association; fires on 50% of proteins, spread 0.50"
    note = ranking.note(3)
    assert note.startswith("--select informative: 3 of 9 features (2 by a concept association")
    assert f"1 firing on fewer than {MIN_PROTEINS} proteins" in note and "2 firing on more than 90%" in note


def test_ranking_is_deterministic_whatever_the_input_order():
    profiles = _profiles()
    expected = rank_informative(profiles, n_indexed=N).picks
    for seed in range(5):
        random.Random(seed).shuffle(profiles)
        assert rank_informative(profiles, n_indexed=N).picks == expected


def test_a_larger_index_keeps_a_rare_feature_that_fires_on_enough_proteins():
    rare = FeatureProfile(0, 1.0, 0.001, FLAT)
    assert rank_informative([rare], n_indexed=N).picks == []
    assert [p.feature for p in rank_informative([rare], n_indexed=50_000).picks] == [0]


@pytest.fixture
def db_with_stats(workspace):
    """An SAE with the profiles above stored as `index` and `concepts` would store them."""
    with workspace.db() as db:
        record_sae(db, SaeRecord(sae_id="s", architecture="relu", d_in=8, d_sae=9, path="saes/s",
                                 weights_hash="0" * 64, source="trained"))
        profiles = _profiles()
        write_feature_stats(db, [FeatureStats(sae_id="s", feature=p.feature, max_activation=p.max_activation,
                                              frac_residues=0.01, frac_proteins=p.frac_proteins,
                                              quantiles=tuple(q * p.max_activation for q in p.quantiles))
                                 for p in profiles])
        concepts = [FeatureConcept(feature=p.feature, concept=c, rank=rank, threshold=0.5, f1_valid=f1,
                                   f1_test=f1 * scale, precision_test=None, recall_test=None)
                    for p in profiles if p.concept
                    for rank, (c, f1, scale) in enumerate([("Other", p.f1_test, 0.5),
                                                           (p.concept, p.f1_test, 1.0)], start=1)]
        write_feature_concepts(db, "s", concepts, n_features=len(profiles))
        yield db


def test_plan_takes_the_first_n_of_the_ranking_with_reasons_and_skips_labeled(db_with_stats):
    from storage.labels import LabelRecord, save_label

    db = db_with_stats
    selection = FeatureSelection(select="informative", limit=3)
    plan = plan_features(db, "s", selection, n_indexed=N)
    assert plan.features == [4, 3, 5] and plan.skipped == []
    assert "concept 'Signal'" in plan.reasons[4]  # the best concept by test F1, not by rank
    assert plan.note and plan.note.startswith("--select informative: 3 of 9 features")
    assert selection.describe() == "informative, limit 3"
    save_label(db, LabelRecord(sae_id="s", feature=3, label="Transmembrane", description="x",
                               backend="baseline"), [])
    again = plan_features(db, "s", selection, n_indexed=N)
    assert again.features == [4, 5] and again.skipped == [3]  # the same three picks; a rerun adds none
    assert plan_features(db, "s", FeatureSelection(all=True, limit=2), n_indexed=N).features == [0, 1]


def test_plan_refuses_select_with_another_selector_or_top_with_limit(db_with_stats):
    with pytest.raises(InputError, match="--top and --select were given"):
        plan_features(db_with_stats, "s", FeatureSelection(top=3, select="informative"), n_indexed=N)
    with pytest.raises(InputError, match="--top N already says how many"):
        plan_features(db_with_stats, "s", FeatureSelection(top=3, limit=2), n_indexed=N)


# --- through the command, on a real index --------------------------------------------------------------
@pytest.mark.slow
def test_label_select_informative_on_a_real_index_prints_how_it_chose(cli, swissprot_dir, tmp_path):
    from sae.index import open_index
    from tests.index_fixtures import SAE_ID, copy_template

    ws = copy_template(swissprot_dir, tmp_path / "ws")
    with ws.db() as db:
        expected = plan_features(db, SAE_ID, FeatureSelection(select="informative", limit=4),
                                 n_indexed=open_index(ws, SAE_ID).n_proteins)
    assert len(expected.features) == 4
    result = cli("label", SAE_ID, "--select", "informative", "--limit", "4", "--backend", "baseline",
                 "-w", ws.root, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["n_labeled"] == 4
    assert "--select informative: 4 of 24 features" in result.stderr
    with ws.db() as db:
        labeled = sorted(r["feature"] for r in db.query("select feature from labels"))
        args = db.query("select args from runs")[0]["args"]
    assert labeled == sorted(expected.features) and "informative, limit 4" in args


def test_label_refuses_select_beside_another_selector_and_limit_with_nightly(cli, workspace):
    result = cli("label", "x", "--select", "informative", "--all", "-w", workspace.root)
    assert result.exit_code == 2 and "--all and --select were given" in result.stderr
    result = cli("label", "x", "--nightly", "--limit", "3", "-w", workspace.root)
    assert result.exit_code == 2 and "drop --limit" in result.stderr
    result = cli("label", "x", "--select", "surprising", "-w", workspace.root)
    assert result.exit_code == 2 and "surprising" in result.stderr
