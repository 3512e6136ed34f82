"""The label store (storage/labels.py): one label per feature, predictions with it, runs."""

from __future__ import annotations

import pytest

from storage.db import Database
from storage.labels import (
    LabelRecord,
    PredictionRow,
    RunRecord,
    failed_features,
    finish_run,
    get_label,
    get_run,
    label_states,
    labeled_features,
    list_labels,
    list_runs,
    new_run_id,
    save_failure,
    save_label,
    stale_features,
    start_run,
)
from storage.saes import SaeRecord, record_sae


@pytest.fixture
def db():
    database = Database.open(":memory:")
    record_sae(database, SaeRecord(sae_id="s", architecture="relu", d_in=4, d_sae=8, path="saes/s",
                                   weights_hash="0" * 64, source="trained"))
    start_run(database, RunRecord(run_id="r1", sae_id="s", backend="baseline", model="baseline"))
    yield database
    database.close()


def ok(feature: int, label: str = "Zinc finger", **extra) -> LabelRecord:
    fields = {"sae_id": "s", "feature": feature, "label": label, "description": f"{label} proteins.",
              "concepts": ["Zinc finger"], "confidence": 0.9, "pearson": 0.8, "spearman": 0.7, "n_heldout": 2,
              "validated": True, "backend": "baseline", "explainer_model": "baseline", "run_id": "r1",
              "explain_prompt_version": "v1", "simulate_prompt_version": "w1"}
    return LabelRecord(**{**fields, **extra})


def failed(feature: int, error: str = "HTTP 500 after 5 attempts") -> LabelRecord:
    return LabelRecord(sae_id="s", feature=feature, status="failed", error=error, backend="anthropic",
                       run_id="r1")


PREDICTIONS = [PredictionRow(accession="P1", predicted=9, actual=1.0, actual_raw=3.2),
               PredictionRow(accession="P2", predicted=0, actual=0.0, actual_raw=0.0)]


def test_label_and_predictions_round_trip(db):
    label_id = save_label(db, ok(3), PREDICTIONS)
    stored = get_label(db, "s", 3)
    assert stored.id == label_id and stored.label == "Zinc finger" and stored.validated is True
    assert stored.concepts == ["Zinc finger"] and stored.predictions == PREDICTIONS
    assert get_label(db, "s", 4) is None


def test_relabel_replaces_label_and_predictions(db):
    first = save_label(db, ok(3), PREDICTIONS)
    second = save_label(db, ok(3, "Heme binding", validated=False), PREDICTIONS[:1])
    assert first == second
    stored = get_label(db, "s", 3)
    assert stored.label == "Heme binding" and not stored.validated and len(stored.predictions) == 1
    assert db.query("select count(*) as n from predictions")[0]["n"] == 1


def test_failure_never_overwrites_an_ok_label(db):
    save_label(db, ok(3), PREDICTIONS)
    assert save_failure(db, failed(3)) is False
    stored = get_label(db, "s", 3)
    assert stored.status == "ok" and stored.label == "Zinc finger" and len(stored.predictions) == 2


def test_failure_is_stored_then_replaced_by_a_later_success(db):
    assert save_failure(db, failed(5)) is True
    assert save_failure(db, failed(5, "malformed answer after one repair attempt")) is True
    assert get_label(db, "s", 5).error == "malformed answer after one repair attempt"
    assert failed_features(db, "s") == {5}
    save_label(db, ok(5), PREDICTIONS)
    stored = get_label(db, "s", 5)
    assert stored.status == "ok" and stored.error is None
    assert failed_features(db, "s") == set() and labeled_features(db, "s") == {5}


def test_write_is_atomic(db):
    bad = [PredictionRow(accession="P1", predicted=1), PredictionRow(accession="P1", predicted=2)]  # dup key
    with pytest.raises(Exception, match="UNIQUE"):
        save_label(db, ok(6), bad)
    assert get_label(db, "s", 6) is None


def test_full_text_search_follows_updates(db):
    save_label(db, ok(1, "Heme binding pocket"), [])
    save_label(db, ok(2, "Zinc finger"), [])
    hits = db.query("select rowid from labels_fts where labels_fts match ?", ("heme",))
    assert len(hits) == 1
    save_label(db, ok(1, "Disulfide bond"), [])
    assert db.query("select rowid from labels_fts where labels_fts match ?", ("heme",)) == []


def test_listing_and_states(db):
    save_label(db, ok(1), [])
    save_label(db, ok(2, validated=False, explain_prompt_version="v0"), [])
    save_failure(db, failed(3))
    assert [x.feature for x in list_labels(db, "s")] == [1, 2, 3]
    assert [x.feature for x in list_labels(db, "s", status="ok", validated=True)] == [1]
    assert set(label_states(db, "s")) == {1, 2, 3}
    assert stale_features(db, "s", explain_prompt_version="v1", simulate_prompt_version="w1") == {2}
    assert stale_features(db, "s", explain_prompt_version="v1", simulate_prompt_version="w1",
                          model="claude-sonnet-5-5") == {1, 2}


def test_runs_start_and_finish(db):
    run_id = new_run_id()
    start_run(db, RunRecord(run_id=run_id, sae_id="s", backend="openai", model="gpt-4.1",
                            args={"features": "0-9"}, n_requested=10))
    assert get_run(db, run_id).status == "running"
    finish_run(db, run_id, status="budget_exhausted", n_labeled=4, n_failed=1, n_skipped=2, input_tokens=100,
               output_tokens=10, cost_usd=0.01, message="budget reached")
    run = get_run(db, run_id)
    assert run.status == "budget_exhausted" and run.args == {"features": "0-9"} and run.finished_at
    assert (run.n_labeled, run.n_failed, run.n_skipped, run.cost_usd) == (4, 1, 2, 0.01)
    assert run_id in [r.run_id for r in list_runs(db, "s")]
    assert get_run(db, "nope") is None
