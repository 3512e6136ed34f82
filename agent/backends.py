"""The labeling backends a user picks with `--backend`: anthropic, openai, baseline.

A backend is a `Labeler`: two async stages (explain, simulate) whose results carry the feature id,
their token usage and the model that produced them, plus a cost function. The LLM backends run the
explain/simulate prompts through an agent.llm provider; the baseline computes both offline. The
BACKENDS registry maps names to builders: adding one is one entry, not a new branch somewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import prompts
from agent import pricing
from agent.baseline import MODEL_NAME as BASELINE_MODEL
from agent.baseline import explain_baseline, simulate_baseline
from agent.explain import PROMPT_NAME as EXPLAIN_PROMPT
from agent.explain import Explanation, explain
from agent.llm import PROVIDERS, LLMResult, ProviderBackend, RetryPolicy, Usage, make_llm
from agent.simulate import PROMPT_NAME as SIMULATE_PROMPT
from agent.simulate import Simulation, simulate
from sae.index import FeatureExamples
from storage.errors import InputError


class Labeler(Protocol):
    name: str  # the backend's name
    model: str  # explainer and simulator model
    prompt_versions: dict[str, str | None]  # {"explain": version, "simulate": version}; None: no prompt

    async def explain(self, examples: FeatureExamples) -> LLMResult[Explanation]: ...

    async def simulate(
        self, explanation: Explanation, examples: FeatureExamples
    ) -> LLMResult[Simulation]: ...

    def cost(self, usage: Usage) -> float | None: ...

    async def aclose(self) -> None: ...


class LLMLabeler:
    """Explain and simulate through one LLM provider."""

    def __init__(self, llm: ProviderBackend) -> None:
        self.llm = llm
        self.name = llm.name
        self.model = llm.model
        self.prompt_versions: dict[str, str | None] = {
            "explain": prompts.load(EXPLAIN_PROMPT).version,
            "simulate": prompts.load(SIMULATE_PROMPT).version,
        }

    async def explain(self, examples: FeatureExamples) -> LLMResult[Explanation]:
        return await explain(examples, self.llm)

    async def simulate(self, explanation: Explanation, examples: FeatureExamples) -> LLMResult[Simulation]:
        return await simulate(explanation, examples, self.llm)

    def cost(self, usage: Usage) -> float | None:
        return pricing.cost_usd(self.model, input_tokens=usage.input_tokens,
                                output_tokens=usage.output_tokens, cache_read=usage.cache_read,
                                cache_write=usage.cache_write)

    async def aclose(self) -> None:
        await self.llm.aclose()


class BaselineLabeler:
    """Concept enrichment, no LLM: see agent/baseline.py."""

    name = "baseline"
    model = BASELINE_MODEL

    def __init__(self) -> None:
        self.prompt_versions: dict[str, str | None] = {"explain": None, "simulate": None}

    async def explain(self, examples: FeatureExamples) -> LLMResult[Explanation]:
        return LLMResult(explain_baseline(examples), Usage(), self.model)

    async def simulate(self, explanation: Explanation, examples: FeatureExamples) -> LLMResult[Simulation]:
        return LLMResult(simulate_baseline(explanation, examples), Usage(), self.model)

    def cost(self, usage: Usage) -> float | None:
        return 0.0

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class BackendSpec:
    name: str
    key_env: str | None  # the variable whose presence makes it the default (None: always available)
    default_model: str
    build: Callable[..., Labeler]


def _llm_builder(provider: str) -> Callable[..., Labeler]:
    def build(*, model: str | None = None, base_url: str | None = None, timeout_s: float = 120.0,
              retry: RetryPolicy | None = None) -> Labeler:
        llm = make_llm(provider, model=model, base_url=base_url, timeout_s=timeout_s, retry=retry)
        return LLMLabeler(llm)

    return build


def _baseline_builder(*, model: str | None = None, base_url: str | None = None, **_: object) -> Labeler:
    if model not in (None, BASELINE_MODEL):
        raise InputError("the baseline backend has no model to choose; drop --model.")
    if base_url is not None:
        raise InputError("the baseline backend calls no server; drop --base-url.")
    return BaselineLabeler()


# Order matters: the first backend whose key is set is the default.
BACKENDS: dict[str, BackendSpec] = {
    name: BackendSpec(name, PROVIDERS[name].key_env, PROVIDERS[name].default_model, _llm_builder(name))
    for name in ("anthropic", "openai")
}
BACKENDS["baseline"] = BackendSpec("baseline", None, BASELINE_MODEL, _baseline_builder)


def default_backend(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(backend, why): the first backend whose API key is set, else the offline baseline."""
    env = os.environ if env is None else env
    for spec in BACKENDS.values():
        if spec.key_env is None:
            return spec.name, "no ANTHROPIC_API_KEY or OPENAI_API_KEY is set"
        if env.get(spec.key_env):
            return spec.name, f"{spec.key_env} is set"
    raise AssertionError("the baseline backend is always available")  # pragma: no cover


def make_labeler(name: str, **options: object) -> Labeler:
    """Build a backend by name; InputError for an unknown one, ConfigError for a missing key."""
    try:
        spec = BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.") from None
    return spec.build(**options)
