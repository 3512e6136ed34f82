"""The simulate step: no activation ever reaches the prompt; the answer is keyed by accession."""

from __future__ import annotations

import asyncio
import re

import pytest
from pydantic import ValidationError

from agent.explain import Explanation
from agent.llm import MalformedOutputError, RetryPolicy, make_llm
from agent.simulate import build_simulate_request, prediction_model, simulate
from sae.index import FeatureExamples
from tests.fake_llm import FakeLLM
from tests.planted import planted_set

EXPLANATION = Explanation(sae_id="planted", feature=1, label="Transmembrane helix",
                          description="Fires inside transmembrane helices.", concepts=["Transmembrane"],
                          confidence=0.9)


def with_actuals(fe: FeatureExamples, actuals: list[float]) -> FeatureExamples:
    peak = max(actuals)
    return fe.model_copy(update={"heldout_actuals": tuple(actuals),
                                 "heldout_normalized": tuple(a / peak for a in actuals)})


def test_prompt_carries_no_activation(swissprot_dir):
    _, fe = planted_set(swissprot_dir)[1]
    # distinctive values that could not appear by accident
    fe = with_actuals(fe, [1.23456 + 0.11111 * i for i in range(len(fe.heldout))])
    request = build_simulate_request(EXPLANATION, fe.heldout)
    text = request.system + "\n" + request.messages[0].content
    for raw, norm in zip(fe.heldout_actuals, fe.heldout_normalized, strict=True):
        for value in (raw, norm):
            for shown in (f"{value}", f"{value:.2f}", f"{value:.3f}", f"{round(value * 10)}/10"):
                assert shown not in text
    assert 'activation="' not in text and "fires on" not in text
    assert not re.search(r"^sequence \d", text, re.M)  # no sequence windows, so no firing marks
    assert "annotations at firing residues" not in text
    assert text.count("<protein accession=") == len(fe.heldout)


def test_protein_order_is_by_accession_whatever_the_activations(swissprot_dir):
    _, fe = planted_set(swissprot_dir)[1]
    reordered = fe.model_copy(update={"heldout": tuple(reversed(fe.heldout))})
    first = build_simulate_request(EXPLANATION, fe.heldout).messages[0].content
    second = build_simulate_request(EXPLANATION, reordered.heldout).messages[0].content
    assert first == second
    accessions = re.findall(r'<protein accession="([^"]+)">', first)
    assert accessions == sorted(p.accession for p in fe.heldout)


def test_output_model_requires_exactly_the_held_out_accessions():
    model = prediction_model(["P12345", "Q9-2"])
    schema = model.model_json_schema()
    assert set(schema["properties"]) == {"P12345", "Q9-2"}
    assert schema["additionalProperties"] is False and set(schema["required"]) == {"P12345", "Q9-2"}
    parsed = model.model_validate({"P12345": 3, "Q9-2": 0})
    assert parsed.model_dump(by_alias=True) == {"P12345": 3, "Q9-2": 0}
    with pytest.raises(ValidationError, match="Field required"):
        model.model_validate({"P12345": 3})
    with pytest.raises(ValidationError, match="Extra inputs"):
        model.model_validate({"P12345": 3, "Q9-2": 1, "X1": 2})
    with pytest.raises(ValidationError, match="less than or equal"):
        model.model_validate({"P12345": 11, "Q9-2": 1})


def _simulate(fake: FakeLLM, fe: FeatureExamples, name: str = "anthropic"):
    async def go():
        url = fake.anthropic_url if name == "anthropic" else fake.openai_url
        llm = make_llm(name, base_url=url, retry=RetryPolicy(2, 0.001, 0.01))
        try:
            return await simulate(EXPLANATION, fe, llm)
        finally:
            await llm.aclose()

    return asyncio.run(go())


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    monkeypatch.setenv("OPENAI_API_KEY", "test")


@pytest.mark.parametrize("name", ["anthropic", "openai"])
def test_all_held_out_proteins_in_one_call_aligned_with_heldout(swissprot_dir, keys, name):
    _, fe = planted_set(swissprot_dir)[1]
    with FakeLLM() as fake:
        result = _simulate(fake, fe, name)
        assert fake.count() == 1
    sim = result.parsed
    assert sim.accessions == tuple(p.accession for p in fe.heldout)
    by_accession = sim.as_dict()
    for protein, actual in zip(fe.heldout, fe.heldout_normalized, strict=True):
        carries = any(f.type == "Transmembrane" for f in protein.features)
        assert by_accession[protein.accession] == (9.0 if carries else 0.0)
        if actual > 0:
            assert carries


def test_missing_or_extra_accession_is_repaired_once_then_fails(swissprot_dir, keys):
    _, fe = planted_set(swissprot_dir)[1]
    with FakeLLM(script=["bad_answer"]) as fake:
        result = _simulate(fake, fe)
        assert result.repaired and fake.count() == 2
        repair = fake.requests[1].body["messages"][-1]["content"]
        assert "NOT_AN_ACCESSION" in repair or "Extra inputs" in repair
    with FakeLLM(script=["bad_answer", "bad_answer"]) as fake, pytest.raises(MalformedOutputError,
                                                                              match="Field required"):
        _simulate(fake, fe)


def test_no_held_out_proteins_means_no_call(keys):
    fe = FeatureExamples(sae_id="planted", feature=1, max_activation=1.0, frac_proteins=0.1, examples=(),
                         heldout=(), heldout_actuals=(), heldout_normalized=())
    with FakeLLM() as fake:
        result = _simulate(fake, fe)
        assert fake.count() == 0
    assert result.parsed.predicted == ()
