"""`plmlabel label --agent` and `show`: limits as config and flags, dry-run estimate from the limits,
the trace shown; on a real index (slow) the agent searches the index and never sees the test half."""

from __future__ import annotations

import json
import re

import pytest

import sae.index
from agent.agentic.tools import Limits
from agent.labeling.estimate import dry_run
from storage.labels import get_label
from tests.agent_fixtures import synthetic_feature
from tests.fake_llm import FakeLLM
from tests.planted import register_sae


@pytest.fixture
def ws(workspace, monkeypatch):
    features = {i: synthetic_feature(kind, i) for i, kind in enumerate(("zinc", "zinc_nucleus"))}
    with workspace.db() as db:
        register_sae(db, "agent", list(features.values()))
    monkeypatch.setattr(sae.index, "load_feature_examples", lambda _ws, _db, _sae, f: features[f])
    config = "[label]\nretry_wait_s = 0.001\nmax_retries = 1\n[agent]\nmax_simulations = 4\n"
    workspace.config_path.write_text(config)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agent-cli-test")
    return workspace


def test_agent_flags_need_agent(cli, ws):
    result = cli("label", "agent", "--all", "--backend", "baseline", "--max-turns", "3", "-w", ws.root)
    assert result.exit_code == 2 and "--max-turns go with --agent" in result.stderr


def test_baseline_agent_then_show(cli, ws):
    result = cli("label", "agent", "--all", "--backend", "baseline", "--agent", "-w", ws.root)
    assert result.exit_code == 0, result.stderr
    with ws.db() as db:
        label = get_label(db, "agent", 1)
        trace = json.loads(label.trace)
    assert trace["simulations"] <= 4  # [agent] max_simulations from plmlabel.toml
    shown = cli("show", "agent", "1", "-w", ws.root)
    assert shown.exit_code == 0
    assert "Agent (baseline)" in shown.stdout and "one-shot:" in shown.stdout and "hypothesis" in shown.stdout


def test_llm_agent_through_the_command(cli, ws):
    with FakeLLM() as fake:
        result = cli("label", "agent", "--features", "1", "--agent", "--max-turns", "4", "--base-url",
                     fake.anthropic_url, "-w", ws.root, "--json")
    assert result.exit_code == 0, result.stderr
    with ws.db() as db:
        label = get_label(db, "agent", 1)
    trace = json.loads(label.trace)
    assert trace["agent"] == "llm" and trace["turns"] <= 4 and label.oneshot_pearson is not None
    assert label.input_tokens > 0 and label.cost_usd > 0


def test_dry_run_estimates_the_agent_from_its_limits():
    fe = synthetic_feature("zinc", 0)
    common = dict(sae_id="agent", features=[0], backend="anthropic", model="claude-sonnet-4-5",
                  load_examples=lambda _: fe)
    plain = dry_run(**common)
    small = dry_run(**common, agent=Limits(max_turns=4, max_tool_calls=8, max_simulations=2))
    large = dry_run(**common, agent=Limits())
    assert plain.cost_usd < small.cost_usd < large.cost_usd
    stages = [r.stage for r in large.features[0].requests]
    assert any(s.startswith("agent: 16 turns") for s in stages) and any("7 simulations" in s for s in stages)
    assert "agent is estimated at its limits" in large.note


@pytest.mark.slow
def test_on_a_real_index_the_agent_never_sees_the_test_half(cli, tmp_path, monkeypatch):
    from sae.index import load_feature_examples
    from tests.index_fixtures import SAE_ID, copy_template, shared_swissprot

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agent-cli-test")
    ws = copy_template(shared_swissprot(), tmp_path / "ws")
    with FakeLLM() as fake:
        result = cli("label", SAE_ID, "--top", "2", "--agent", "--base-url", fake.anthropic_url,
                     "-w", ws.root)
        assert result.exit_code == 0, result.stderr
        requests = list(fake.requests)
    with ws.db() as db:
        searched = 0
        for feature in {r.feature for r in requests if r.stage == "agent"}:
            test = {p.accession for p in load_feature_examples(ws, db, SAE_ID, feature).heldout}
            for r in (r for r in requests if r.feature == feature and r.stage == "agent"):
                body = json.dumps(r.body)
                assert not any(re.search(rf"\b{a}\b", body) for a in test)
                searched += '"search_proteins"' in body
    assert searched
    shown = cli("show", SAE_ID, str(requests[-1].feature), "-w", ws.root)
    assert shown.exit_code == 0 and "Agent (llm)" in shown.stdout
