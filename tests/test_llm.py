"""The LLM layer through the real anthropic and openai SDKs, pointed at the local fake server."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest
from pydantic import BaseModel, Field

from agent import pricing
from agent.llm import (
    PROVIDERS,
    LLMRequest,
    MalformedOutputError,
    Message,
    ProviderError,
    RetryPolicy,
    make_llm,
    parse_retry_after,
    register_provider,
    strict_schema,
)
from storage.errors import ConfigError, InputError
from tests.fake_llm import FakeLLM

FAST = RetryPolicy(max_attempts=6, initial_wait=0.001, max_wait=0.01)
PROMPT = (
    "Feature #7 of SAE toy.\n"
    '<example rank="1" kind="top" activation="10">\n<data>\nkeywords: Zinc\n'
    "annotations at firing residues: Zinc finger C2H2-type ×2 (3-20; 30-50)\n</data>\n</example>\n"
    '<example rank="2" kind="silent" activation="0">\n<data>\nkeywords: Kinase\n</data>\n</example>'
)


class Answer(BaseModel):
    """An explanation."""

    label: str
    description: str
    concepts: list[str]
    confidence: float = Field(ge=0, le=1)


def request(check=None) -> LLMRequest[Answer]:
    return LLMRequest(system="You explain features. " * 20, messages=(Message("user", PROMPT),),
                      output=Answer, schema_name="explanation", check=check)


@pytest.fixture
def fake():
    with FakeLLM(timeout_sleep=1.5) as server:
        yield server


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")


def backend(name: str, fake: FakeLLM, retry: RetryPolicy = FAST, timeout_s: float = 5.0):
    """'anthropic' (structured outputs), 'anthropic-tool' (forced tool use) or 'openai'."""
    if name.startswith("anthropic"):
        options = {"structured": "tool"} if name == "anthropic-tool" else {}
        return make_llm("anthropic", base_url=fake.anthropic_url, retry=retry, timeout_s=timeout_s, **options)
    return make_llm(name, base_url=fake.openai_url, retry=retry, timeout_s=timeout_s)


def generate(llm, req):
    async def go():
        try:
            return await llm.generate(req)
        finally:
            await llm.aclose()

    return asyncio.run(go())


PROVIDER_NAMES = ["anthropic", "anthropic-tool", "openai"]


# --- pricing ---------------------------------------------------------------------------------------
def test_price_matches_longest_prefix_and_unknown_is_none():
    assert pricing.price_for("claude-sonnet-4-5-20250929") == pricing.PRICES["claude-sonnet-4-5"]
    assert pricing.price_for("gpt-4o-mini-2024-07-18") == pricing.PRICES["gpt-4o-mini"]
    assert pricing.price_for("gpt-4o") == pricing.PRICES["gpt-4o"]
    assert pricing.price_for("llama3.1:8b") is None
    assert pricing.cost_usd("llama3.1:8b", input_tokens=10) is None


def test_cost_counts_every_token_kind_and_batch_halves():
    # claude-sonnet-4-5: $3 in, $15 out, $0.30 cache read, $3.75 cache write per million tokens
    cost = pricing.cost_usd("claude-sonnet-4-5", input_tokens=1_000_000, output_tokens=100_000,
                            cache_read=1_000_000, cache_write=200_000)
    assert cost == pytest.approx(3.0 + 1.5 + 0.3 + 0.75)
    assert pricing.cost_usd("claude-sonnet-4-5", input_tokens=1_000_000, batch=True) == pytest.approx(1.5)
    assert pricing.estimate_tokens("a" * 401) == 101


# --- retry-after, schema -----------------------------------------------------------------------------
def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    in_ten = parse_retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)})
    assert 8 <= in_ten <= 10.5
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_strict_schema_closes_every_object():
    class Inner(BaseModel):
        name: str = Field(max_length=5, default="x")

    class Outer(BaseModel):
        items: list[Inner]
        score: float = Field(ge=0, le=1)

    schema = strict_schema(Outer)
    assert schema["additionalProperties"] is False and schema["required"] == ["items", "score"]
    inner = schema["$defs"]["Inner"]
    assert inner["additionalProperties"] is False and inner["required"] == ["name"]
    text = str(schema)
    assert "maxLength" not in text and "minimum" not in text and "default" not in text


# --- keys and the registry ---------------------------------------------------------------------------
def test_missing_keys_name_the_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        make_llm("anthropic")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_llm("openai")


def test_openai_compatible_server_needs_no_key(monkeypatch, fake):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = generate(backend("openai", fake), request())
    assert result.parsed.label
    assert fake.requests[0].api_key == "no-key"


def test_registry_refuses_unknown_and_duplicate_names():
    with pytest.raises(InputError, match="unknown LLM provider"):
        make_llm("gemini")
    with pytest.raises(ValueError, match="already registered"):
        register_provider(PROVIDERS["openai"])


# --- both SDK paths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_answer_is_parsed_with_usage(name, fake, keys):
    result = generate(backend(name, fake), request())
    assert result.parsed.label == "Zinc finger C2H2-type"
    assert result.parsed.concepts == ["Zinc finger C2H2-type"]
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.model == PROVIDERS[name.split("-")[0]].default_model and not result.repaired
    assert fake.requests[0].api_key == ("sk-openai-test" if name == "openai" else "sk-ant-test")


def test_anthropic_uses_structured_outputs_and_caches_the_instructions(fake, keys):
    generate(backend("anthropic", fake), request())
    body = fake.requests[0].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["output_config"]["format"] == {"type": "json_schema", "schema": strict_schema(Answer)}
    assert "tools" not in body and "tool_choice" not in body


@pytest.mark.parametrize(("model", "mode"), [
    ("claude-sonnet-5-5", "json_schema"), ("claude-haiku-4-5", "json_schema"),
    ("claude-3-5-haiku-latest", "tool"), ("claude-sonnet-4-20250514", "tool"),
])
def test_anthropic_picks_forced_tool_use_only_for_models_before_structured_outputs(model, mode, keys):
    assert make_llm("anthropic", model=model).structured == mode


def test_anthropic_tool_mode_forces_the_tool(fake, keys):
    generate(backend("anthropic-tool", fake), request())
    body = fake.requests[0].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["tool_choice"] == {"type": "tool", "name": "explanation"}
    assert body["tools"][0]["input_schema"] == Answer.model_json_schema()


def test_anthropic_usage_reports_cache_writes_then_reads(fake, keys):
    first = generate(backend("anthropic", fake), request())
    second = generate(backend("anthropic", fake), request())
    assert first.usage.cache_write > 0 and first.usage.cache_read == 0
    assert second.usage.cache_read == first.usage.cache_write and second.usage.cache_write == 0


def test_openai_request_uses_strict_json_schema(fake, keys):
    generate(backend("openai", fake), request())
    body = fake.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
    assert body["messages"][0]["role"] == "system"


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_transient_errors_are_retried(name, fake, keys):
    fake.script = ["429", "500", "529", "timeout", "malformed_body"]
    result = generate(backend(name, fake, timeout_s=1.0), request())
    assert result.parsed.label == "Zinc finger C2H2-type"
    assert [r.action for r in fake.requests] == ["429", "500", "529", "timeout", "malformed_body", "ok"]


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_sdk_retries_are_off_so_ours_are_the_only_ones(name, fake, keys):
    fake.script = ["500", "500", "500"]
    with pytest.raises(ProviderError, match="after 1 attempts"):
        generate(backend(name, fake, retry=RetryPolicy(max_attempts=1)), request())
    assert fake.count() == 1


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_retries_give_up_with_a_reason(name, fake, keys):
    fake.error_rate, fake.errors = 1.0, ("500",)
    with pytest.raises(ProviderError) as info:
        generate(backend(name, fake, retry=RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=0.01)),
                 request())
    assert "after 3 attempts" in info.value.reason and "HTTP 500" in info.value.reason
    assert not info.value.fatal
    assert fake.count() == 3


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_bad_key_is_fatal_and_not_retried(name, fake, keys):
    fake.script = ["401"]
    with pytest.raises(ProviderError) as info:
        generate(backend(name, fake), request())
    assert info.value.fatal and "HTTP 401" in info.value.reason
    assert fake.count() == 1


def test_retry_after_is_honoured(fake, keys):
    fake.script, fake.retry_after = ["429"], "0.4"
    slow_cap = RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=5.0)
    started = time.monotonic()
    generate(backend("anthropic", fake, retry=slow_cap), request())
    assert time.monotonic() - started >= 0.4
    fake.script, fake.retry_after = ["429"], "100"  # capped by max_wait
    started = time.monotonic()
    generate(backend("anthropic", fake), request())
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_malformed_answer_gets_exactly_one_repair(name, fake, keys):
    fake.script = ["bad_answer"]
    result = generate(backend(name, fake), request())
    assert result.repaired and result.parsed.label == "Zinc finger C2H2-type"
    first, second = fake.requests
    assert second.n_messages == first.n_messages + 2
    repair = second.body["messages"][-1]["content"]
    assert "could not be used" in repair and "description" in repair


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_second_malformed_answer_fails_with_reason_and_usage(name, fake, keys):
    fake.script = ["bad_answer", "bad_answer"]
    with pytest.raises(MalformedOutputError) as info:
        generate(backend(name, fake), request())
    assert "after one repair attempt" in info.value.reason and "schema" in info.value.reason
    assert info.value.usage.output_tokens > 0
    assert fake.count() == 2


def test_extra_check_failures_are_repaired_too(fake, keys):
    seen = []

    def check(answer: Answer) -> None:
        seen.append(answer.label)
        if len(seen) == 1:
            raise ValueError("the label must name a concept from the examples")

    result = generate(backend("openai", fake), request(check))
    assert result.repaired and len(seen) == 2
    assert "must name a concept" in fake.requests[1].body["messages"][-1]["content"]
