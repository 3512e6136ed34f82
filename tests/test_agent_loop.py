"""The LLM agent through the real SDKs and the fake server: a scripted model that searches, tries and
commits; and one that misbehaves (unknown tools, bad arguments, loops, never commits, provider errors)
is bounded by the limits, recorded with a reason, and the best validated hypothesis is stored."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.agentic.loop import run_agent
from agent.agentic.tools import Limits
from agent.agentic.trace import check_trace
from agent.agentic.view import AgentView
from agent.baseline import explain_baseline
from agent.explain import build_explain_request
from agent.llm import make_llm
from storage.labels import get_label
from tests.agent_fixtures import synthetic_feature
from tests.agent_run import FAST, label_features, llm_labeler
from tests.fake_llm import FakeLLM


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agent-loop-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-oai-agent-loop-test")


@pytest.fixture(scope="module")
def feature():
    return synthetic_feature("zinc_nucleus", 1)


def agent(fake, fe, provider="anthropic", **limits):
    url = fake.anthropic_url if provider == "anthropic" else fake.openai_url
    llm = make_llm(provider, base_url=url, retry=FAST, timeout_s=5.0)

    async def go():
        try:
            prefix = build_explain_request(fe).messages[0].content
            return await run_agent(AgentView.of(fe), explain_baseline(fe), llm, prefix=prefix,
                                   limits=Limits(**limits))
        finally:
            await llm.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_scripted_model_finds_the_combination(keys, feature, provider):
    with FakeLLM() as fake:
        out = agent(fake, feature, provider)
        turns = [r for r in fake.requests if r.stage == "agent"]
    assert out.stopped == "committed" and out.source == "agent" and out.turns == 3 == len(turns)
    assert "AND" in out.committed.label and out.committed.validation_r > 0.9
    assert check_trace(out.trace) == []
    tools = [s["tool"] for s in out.trace["steps"] if s["kind"] == "tool"]
    assert tools[0] == "search_proteins" and "try_explanation" in tools and tools[-1] == "commit_label"
    # The shared prefix is cached: after the first turn it is read from the prompt cache.
    assert out.usage.cache_read > 0
    if provider == "anthropic":
        body = turns[-1].body
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert any(b.get("cache_control") for b in body["messages"][0]["content"])
    else:
        firsts = {json.dumps(r.body["messages"][:2]) for r in turns}
        assert len(firsts) == 1  # a byte-identical prefix on every turn


@pytest.mark.parametrize("script, stopped", [
    (["unknown_tool", "bad_args"], "committed"),
    (["no_commit"] * 10, "turn_limit"),
    (["loop"] * 10, "error"),
])
def test_misbehaviour_is_bounded_and_recorded(keys, feature, script, stopped):
    with FakeLLM() as fake:
        fake.agent_script = list(script)
        out = agent(fake, feature, max_turns=5)
    assert out.stopped == stopped and check_trace(out.trace) == []
    assert out.turns <= 5
    if stopped == "committed":
        errors = [s for s in out.trace["steps"] if s["kind"] == "tool" and not s["ok"]]
        assert "unknown tool" in errors[0]["summary"] and "bad arguments" in errors[1]["summary"]
    else:
        assert out.trace["reason"] and out.source in ("oneshot", "best_so_far")
        assert out.committed.validation_r is not None  # the best validated hypothesis is stored


def test_limits_on_calls_and_an_untried_commit(keys, feature):
    with FakeLLM() as fake:
        out = agent(fake, feature, max_tool_calls=1)
    assert out.stopped == "tool_limit" and out.tool_calls == 1
    with FakeLLM() as fake:
        fake.agent_script = ["commit_untried"]
        out = agent(fake, feature)
    assert out.stopped == "committed" and out.simulations == 2  # the one-shot, then the committed one


def test_a_provider_error_mid_run_keeps_the_one_shot_label(keys, feature, tmp_path):
    with FakeLLM(script=["ok", "ok", "500", "500"]) as fake:  # explain, validation trial, then the turn fails
        db, summary = label_features(tmp_path, [feature], llm_labeler("anthropic", fake))
    assert summary.n_labeled == 1
    label = get_label(db, "agent", feature.feature)
    trace = json.loads(label.trace)
    assert trace["stopped"] == "error" and "failed" in trace["reason"]
    assert trace["committed"]["source"] == "oneshot" and label.oneshot_pearson == pytest.approx(label.pearson)


def test_with_batch_the_agent_runs_in_line_between_batches(keys, feature, tmp_path):
    from agent.labeling.batch import BatchSettings
    from agent.labeling.runner import run_job
    from agent.labeling.writer import JobSettings
    from storage.workspace import Workspace
    from tests.planted import register_sae

    ws = Workspace(tmp_path / "ws")
    ws.init()
    db = ws.db()
    register_sae(db, "agent", [feature])
    with FakeLLM() as fake:
        fake.batch_end_after = 0
        summary = asyncio.run(run_job(db, sae_id="agent", features=[feature.feature],
                                      labeler=llm_labeler("anthropic", fake),
                                      load_examples=lambda _: feature, settings=JobSettings(),
                                      batch=BatchSettings(wait=True, poll_interval_s=0.01)))
        in_batches = {r.stage for r in fake.requests if r.path == "/v1/messages/batches"}
        in_line = {r.stage for r in fake.requests if r.path == "/v1/messages"}
    assert summary.n_labeled == 1
    assert in_batches == {"explanation", "simulation"} and "agent" in in_line
    label = get_label(db, "agent", feature.feature)
    assert json.loads(label.trace)["agent"] == "llm" and label.oneshot_pearson is not None
