"""The labeling backends a user picks with `--backend`: anthropic, openai, baseline.

A backend is a `Labeler`: the stages of the labeling protocol it runs (agent/labeling/protocol.py),
the LLM they talk to (None for the offline baseline), the prompt versions stored with each label,
and a cost function. The BACKENDS registry maps names to specs: adding a provider is its module in
agent/llm plus one entry here; nothing else tests a backend by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import prompts
from agent import pricing
from agent.agentic.tools import Limits
from agent.baseline import MODEL_NAME as BASELINE_MODEL
from agent.baseline import explain_baseline, simulate_baseline
from agent.labeling.agent_stage import AgentStage
from agent.labeling.protocol import (
    CallStage,
    ExplainStage,
    FeatureWork,
    ResidueStage,
    SimulateStage,
    Stage,
)
from agent.llm import BATCH_APIS, PROVIDERS, LLMBackend, ProviderBackend, RetryPolicy, Usage, make_llm
from storage.errors import InputError


class Labeler:
    """The stages of one backend, the LLM they use and what its tokens cost."""

    def __init__(
        self,
        name: str,
        model: str,
        stages: Sequence[Stage],
        llm: ProviderBackend | None = None,
        *,
        batch: bool = False,
    ) -> None:
        self.name, self.model, self.llm = name, model, llm
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.batch = batch  # whether its provider has a batch API
        self.prompt_versions: dict[str, str | None] = {
            s.name: prompts.load(s.prompt).version if s.prompt else None for s in self.stages
        }
        for required in ("explain", "simulate"):
            self.prompt_versions.setdefault(required, None)

    @property
    def sends_prompts(self) -> bool:
        return self.llm is not None

    def cost(self, usage: Usage, *, batch: bool = False) -> float | None:
        return pricing.cost_usd(
            self.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read=usage.cache_read,
            cache_write=usage.cache_write,
            batch=batch,
        )

    @property
    def priced(self) -> bool:
        return self.cost(Usage(1, 1)) is not None

    async def aclose(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()


class BaselineExplain(CallStage):
    name = "explain"

    async def run(self, work: FeatureWork, llm: LLMBackend | None) -> Usage:
        work.explanation = explain_baseline(work.examples)
        return Usage()


class BaselineSimulate(CallStage):
    """The baseline simulator; a label the baseline agent committed as a rule is simulated by its rule."""

    name = "simulate"

    async def run(self, work: FeatureWork, llm: LLMBackend | None) -> Usage:
        from agent.labeling.agent_stage import rule_simulation

        assert work.explanation is not None
        work.simulation = rule_simulation(work) or simulate_baseline(work.explanation, work.examples)
        return Usage()


@dataclass(frozen=True)
class BackendSpec:
    name: str
    key_env: str | None  # the variable whose presence makes it the default
    default_model: str
    build: Callable[..., Labeler]
    sends_prompts: bool = True  # False: computes offline, nothing to show in a dry run, nothing to batch
    fallback: bool = False  # the default when no backend's key is set


def llm_stages(residue_pass: bool, agent: Limits | None = None) -> list[Stage]:
    """explain, [agent], simulate, [residues]: `agent` (its limits) puts the agent between the two."""
    stages: list[Stage] = [ExplainStage()]
    if agent is not None:
        stages.append(AgentStage(agent))
    stages.append(SimulateStage())
    if residue_pass:
        stages.append(ResidueStage())
    return stages


def _llm_builder(provider: str) -> Callable[..., Labeler]:
    def build(
        *,
        model: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        residue_pass: bool = False,
        agent: Limits | None = None,
    ) -> Labeler:
        llm = make_llm(provider, model=model, base_url=base_url, timeout_s=timeout_s, retry=retry)
        stages = llm_stages(residue_pass, agent)
        return Labeler(provider, llm.model, stages, llm, batch=provider in BATCH_APIS)

    return build


def _baseline_builder(
    *, model: str | None = None, base_url: str | None = None, residue_pass: bool = False,
    agent: Limits | None = None, **_: Any
) -> Labeler:
    if model not in (None, BASELINE_MODEL):
        raise InputError("the baseline backend has no model to choose; drop --model.")
    if base_url is not None:
        raise InputError("the baseline backend calls no server; drop --base-url.")
    if residue_pass:
        raise InputError("the baseline backend has no per-residue simulator; drop --residue-pass.")
    return BaselineLabeler(agent)


def BaselineLabeler(agent: Limits | None = None) -> Labeler:  # noqa: N802 - reads like the class it used to be
    """Concept enrichment, no LLM: see agent/baseline.py; `agent`: with the offline agent between."""
    stages: list[Stage] = [BaselineExplain()]
    if agent is not None:
        stages.append(AgentStage(agent, baseline=True))
    stages.append(BaselineSimulate())
    return Labeler("baseline", BASELINE_MODEL, stages)


# Order matters: the first backend whose key is set is the default.
BACKENDS: dict[str, BackendSpec] = {
    name: BackendSpec(name, PROVIDERS[name].key_env, PROVIDERS[name].default_model, _llm_builder(name))
    for name in PROVIDERS  # in registration order: the first whose key is set is the default
}
BACKENDS["baseline"] = BackendSpec(
    "baseline", None, BASELINE_MODEL, _baseline_builder, sends_prompts=False, fallback=True
)


def default_backend(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(backend, why): the first backend whose API key is set, else the offline fallback."""
    env = os.environ if env is None else env
    keyed = [spec for spec in BACKENDS.values() if spec.key_env]
    for spec in keyed:
        if env.get(spec.key_env or ""):
            return spec.name, f"{spec.key_env} is set"
    fallback = next(spec for spec in BACKENDS.values() if spec.fallback)
    return fallback.name, f"no {' or '.join(s.key_env or '' for s in keyed)} is set"


def make_labeler(name: str, **options: object) -> Labeler:
    """Build a backend by name; InputError for an unknown one, ConfigError for a missing key."""
    try:
        spec = BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.") from None
    return spec.build(**options)
