"""The agent's tools on a view: compact answers, no test-half protein ever, bad calls as readable errors."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.agentic.baseline_agent import rule_simulator
from agent.agentic.tools import TOOLS, Limits, Toolbox
from agent.agentic.view import AgentView
from tests.agent_fixtures import synthetic_feature


@pytest.fixture(scope="module")
def feature():
    return synthetic_feature("zinc_nucleus", 1)


def box(fe, **limits) -> Toolbox:
    view = AgentView.of(fe)
    return Toolbox(view, rule_simulator(view), Limits(**limits))


def call(toolbox, name, args):
    result = asyncio.run(toolbox.call(name, args))
    return result, json.loads(result.content)


def test_search_compares_matching_with_the_rest(feature):
    result, data = call(box(feature), "search_proteins", {"concept": "Zinc finger", "location": "Nucleus"})
    assert result.ok and data["matching"]["frac_firing"] > 0.8 > data["rest"]["frac_firing"]
    assert len(result.content) < 600  # compact
    test = {p.accession for p in feature.heldout}
    assert not test & {row[0] for row in data["top"]}


def test_concept_f1_per_residue(feature):
    result, data = call(box(feature), "concept_f1", {"concept": "Zinc finger C2H2-type"})
    assert result.ok
    row = data["concepts"][0]
    assert row["precision"] > 0.9 and 0 < row["recall"] <= 1
    bad, _ = call(box(feature), "concept_f1", {"concept": "Nonexistent thing"})
    assert not bad.ok


def test_protein_aligns_firing_runs_and_refuses_test_proteins(feature):
    firing = next(e for e in feature.examples if e.firing and e.protein.features)
    result, data = call(box(feature), "protein", {"accession": firing.protein.accession})
    assert result.ok and data["firing_runs"]
    assert "Zinc finger C2H2-type" in data["firing_runs"][0]["annotations"]
    refused, data = call(box(feature), "protein", {"accession": feature.heldout[0].accession})
    assert not refused.ok and "not among" in data["error"]


def test_bad_calls_are_errors_the_model_reads_and_every_call_counts(feature):
    toolbox = box(feature)
    for name, args in (("read_test_half", {}), ("concept_f1", {"concept": 3}), ("search_proteins", {}),
                       ("protein", "{not json"), ("commit_label", {"label": " ".join(["w"] * 12),
                                                                   "description": "x"})):
        result, data = call(toolbox, name, args)
        assert not result.ok and data["error"]
    assert toolbox.tool_calls == 5 and len(toolbox.errors) == 5
    assert all(step["ok"] is False for step in toolbox.steps)


def test_trials_stop_at_the_simulation_limit(feature):
    toolbox = box(feature, max_simulations=1)
    ok, data = call(toolbox, "try_explanation", {"label": "Zinc finger", "description": "Zinc fingers.",
                                                 "concepts": ["Zinc finger"]})
    assert ok.ok and data["n"] == len(feature.validation) and data["validation_r"] is not None
    assert {row[0] for row in data["proteins"]} == {p.accession for p in feature.validation}
    again, data = call(toolbox, "try_explanation", {"label": "x", "description": "y"})
    assert not again.ok and "no simulations left" in data["error"]


def test_tool_schemas_are_closed_json_schemas():
    for spec in TOOLS:
        schema = spec.schema()
        assert schema["type"] == "object" and schema.get("additionalProperties") is False
        assert spec.description
