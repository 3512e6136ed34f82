"""Leak-free: through the fake server with both real SDKs, no request the server received carries a
test-half accession (except the final scoring of the test half itself, which carries no activation),
and no request depends on, or shows, a test-half activation."""

from __future__ import annotations

import json
import re

import pytest

from tests.agent_fixtures import synthetic_feature
from tests.agent_run import label_features, llm_labeler
from tests.fake_llm import FakeLLM

_ACCESSION_RE = re.compile(r'<protein accession=\\?"([^"\\]+)')


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agent-leak-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-oai-agent-leak-test")


def distinctive(fe, offset: float):
    """The same feature with test-half activations no other number in the run shares."""
    firing = [i for i, v in enumerate(fe.heldout_normalized) if v > 0]
    normalized = list(fe.heldout_normalized)
    for n, i in enumerate(firing):
        normalized[i] = round(0.41 + offset + n * 0.0173, 6)
    return fe.model_copy(update={"heldout_normalized": tuple(normalized),
                                 "heldout_actuals": tuple(v * fe.max_activation for v in normalized)})


def bodies(fake: FakeLLM) -> list[tuple[int, str, str]]:
    return [(r.feature if r.feature is not None else -1, r.stage or "", json.dumps(r.body, sort_keys=True))
            for r in fake.requests]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_no_test_half_in_any_request(tmp_path, keys, provider):
    runs = []
    for offset in (0.0, 0.0031):
        kinds = ("zinc_nucleus", "zinc")
        features = [distinctive(synthetic_feature(k, i), offset) for i, k in enumerate(kinds)]
        with FakeLLM() as fake:
            _, summary = label_features(tmp_path, features, llm_labeler(provider, fake), name=f"ws{offset}")
            assert summary.n_labeled == 2
            runs.append((features, bodies(fake)))
    features, sent = runs[0]
    assert any(stage == "agent" for _, stage, _ in sent)
    assert all(feature >= 0 for feature, _, _ in sent)  # every request names its feature
    for fe in features:
        test = {p.accession for p in fe.heldout}
        validation = {p.accession for p in fe.validation}
        values = [v for v in fe.heldout_normalized if v > 0] + [v for v in fe.heldout_actuals if v > 0]
        for _, stage, body in (s for s in sent if s[0] == fe.feature):
            shown = set(_ACCESSION_RE.findall(body))
            if stage == "agent" or shown & validation or not shown:
                assert not any(a in body for a in test), f"a test-half accession in a {stage} request"
            else:  # the scoring of the test half: exactly its proteins, metadata only
                assert stage == "simulation" and shown == test
            for value in values:
                for text in (repr(value), f"{value:.4f}", f"{value:.3f}"):
                    assert text not in body, f"test-half activation {text} in a {stage} request"
    # Other test-half activations, same test proteins: every request is byte for byte the same.
    assert sorted(sent) == sorted(runs[1][1])
