"""The offline agent through the one labeling protocol: it names combinations one-shot cannot, keeps the
one-shot label where nothing beats it, stores its trace and both test scores, and never commits from
the test half."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.agentic.baseline_agent import run_baseline_agent
from agent.agentic.tools import Limits
from agent.agentic.trace import check_trace
from agent.agentic.view import AgentView
from agent.backends import BaselineLabeler
from agent.baseline import explain_baseline
from agent.labeling.runner import run_job
from agent.labeling.writer import JobSettings
from storage.labels import get_label
from storage.workspace import Workspace
from tests.agent_fixtures import synthetic_feature
from tests.planted import register_sae


def run(tmp_path, features, labeler):
    ws = Workspace(tmp_path / "ws")
    ws.init()
    db = ws.db()
    register_sae(db, "agent", features)
    by_feature = {fe.feature: fe for fe in features}
    summary = asyncio.run(
        run_job(
            db,
            sae_id="agent",
            features=list(by_feature),
            labeler=labeler,
            load_examples=by_feature.__getitem__,
            settings=JobSettings(),
        )
    )
    return db, summary


@pytest.fixture(scope="module")
def features():
    return [
        synthetic_feature("zinc", 0),
        synthetic_feature("zinc_nucleus", 1),
        synthetic_feature("shuffled", 2),
    ]


def test_agent_names_a_combination_and_keeps_both_scores(tmp_path, features):
    db, summary = run(tmp_path, features, BaselineLabeler(Limits()))
    assert summary.n_labeled == 3
    combo = get_label(db, "agent", 1)
    assert "nucleus" in combo.label.lower() and "zinc" in combo.label.lower()
    assert combo.pearson > 0.8 and combo.oneshot_pearson is not None and combo.oneshot_pearson < combo.pearson
    trace = json.loads(combo.trace)
    assert check_trace(trace) == []
    assert trace["agent"] == "baseline" and trace["committed"]["source"] == "agent"
    assert trace["simulations"] <= 6 and trace["tool_calls"] <= 24
    single = get_label(db, "agent", 0)  # nothing beats the one-shot label: it is kept, its score is both
    assert json.loads(single.trace)["committed"]["source"] == "oneshot"
    assert single.oneshot_pearson == pytest.approx(single.pearson)
    assert not get_label(db, "agent", 2).validated


def test_without_agent_nothing_changes(tmp_path, features):
    db, _ = run(tmp_path, features[1:2], BaselineLabeler())
    label = get_label(db, "agent", 1)
    assert label.trace is None and label.oneshot_pearson is None


def test_limits_bound_the_agent(features):
    fe = features[1]
    out = asyncio.run(
        run_baseline_agent(
            AgentView.of(fe), explain_baseline(fe), Limits(max_tool_calls=3, max_simulations=2)
        )
    )
    assert out.simulations <= 2 and out.tool_calls <= 3
    assert check_trace(out.trace) == []


def test_committing_never_looks_at_the_test_half(features):
    """The view has no test-half field, and swapping the test half for other proteins changes nothing."""
    fe = features[1]
    view = AgentView.of(fe)
    assert not {"heldout", "heldout_actuals", "heldout_normalized", "heldout_firing"} & set(vars(view))
    test = {p.accession for p in fe.heldout}
    assert not test & {p.accession for p in view.population()}
    other = fe.model_copy(
        update={
            "heldout": fe.heldout[::-1],
            "heldout_normalized": tuple(1.0 - v for v in fe.heldout_normalized[::-1]),
            "heldout_actuals": fe.heldout_actuals[::-1],
        }
    )
    first = asyncio.run(run_baseline_agent(AgentView.of(fe), explain_baseline(fe), Limits()))
    second = asyncio.run(run_baseline_agent(AgentView.of(other), explain_baseline(other), Limits()))
    assert first.trace == second.trace
