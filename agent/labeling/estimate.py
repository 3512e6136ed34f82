"""What a job would send and cost, before sending: per-feature estimates (budget) and dry runs.

    estimate_cost(labeler, examples, batch=False) -> USD | None     for the budget, before a feature starts
    dry_run(sae_id=..., features=..., backend=..., model=..., load_examples=...) -> DryRun

Estimates cover every request stage the job runs (the per-residue pass included when it is on):
~4 characters per token for the prompt, each stage's typical answer size, no prompt-cache
discount; stages after the first are estimated with a placeholder explanation of typical size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from agent import pricing
from agent.agentic.tools import Limits
from agent.backends import BACKENDS, Labeler, llm_stages
from agent.labeling.agent_stage import AgentEstimate
from agent.labeling.protocol import RequestStage, Stage, placeholder_work
from agent.llm import LLMRequest
from sae.index import FeatureExamples

LoadExamples = Callable[[int], FeatureExamples]


def feature_requests(
    stages: Sequence[Stage], examples: FeatureExamples
) -> list[tuple[str, LLMRequest[Any], int]]:
    """(stage, request, expected output tokens) of every request stage, for one feature."""
    out = []
    work = placeholder_work(examples)
    for stage in stages:
        if not isinstance(stage, RequestStage):
            continue
        request = stage.request(work)
        if request is not None:
            out.append((stage.name, request, stage.expected_output_tokens(request)))
    return out


def agent_requests(stages: Sequence[Stage], examples: FeatureExamples) -> list[AgentEstimate]:
    """The agent stage's requests at its limits (an upper bound), for one feature."""
    from agent.labeling.agent_stage import AgentStage, estimate_agent

    return [row for stage in stages if isinstance(stage, AgentStage) and not stage.baseline
            for row in estimate_agent(stage.limits, examples)]


def stages_cost(
    stages: Sequence[Stage], model: str, examples: FeatureExamples, *, batch: bool = False
) -> float | None:
    """Estimated USD for one feature; None: the model has no price."""
    total = 0.0
    for _, request, out_tokens in feature_requests(stages, examples):
        cost = pricing.cost_usd(
            model, input_tokens=pricing.estimate_tokens(request.text), output_tokens=out_tokens, batch=batch
        )
        if cost is None:
            return None
        total += cost
    for row in agent_requests(stages, examples):
        cost = pricing.cost_usd(model, input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                                cache_read=row.cache_read, cache_write=row.cache_write)  # in-line: full price
        if cost is None:
            return None
        total += cost
    return total


def estimate_cost(labeler: Labeler, examples: FeatureExamples, *, batch: bool = False) -> float | None:
    """Estimated USD for one feature with this labeler (`batch`: at batch-API price)."""
    return stages_cost(labeler.stages, labeler.model, examples, batch=batch)


class DryRunRequest(BaseModel):
    stage: str
    system: str
    user: str
    input_tokens: int
    output_tokens: int


class DryRunFeature(BaseModel):
    feature: int
    requests: list[DryRunRequest]
    cost_usd: float | None


class DryRun(BaseModel):
    sae_id: str
    backend: str
    model: str
    backend_reason: str | None = None
    n_skipped: int
    features: list[DryRunFeature]
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    note: str


_ESTIMATE_NOTE = (
    "estimate: ~4 characters per token, typical answer sizes, no prompt-cache discount; the "
    "simulate prompt uses a placeholder explanation"
)


_AGENT_NOTE = (
    "; the agent is estimated at its limits (every turn, tool call and trial used, its shared prefix read "
    "from the prompt cache after the first turn), an upper bound"
)


def dry_run(
    *,
    sae_id: str,
    features: Sequence[int],
    backend: str,
    model: str,
    load_examples: LoadExamples,
    n_skipped: int = 0,
    backend_reason: str | None = None,
    residue_pass: bool = False,
    agent: Limits | None = None,
) -> DryRun:
    """The prompts each feature would send and their estimated cost. Needs no key, sends nothing.

    With `agent`, the agent's requests are estimated at its limits (every turn and trial used)."""
    rows: list[DryRunFeature] = []
    sends_prompts = BACKENDS[backend].sends_prompts
    stages = llm_stages(residue_pass, agent) if sends_prompts else []
    for feature in features:
        examples = load_examples(feature)
        requests = []
        if sends_prompts:
            for stage, request, out_tokens in feature_requests(stages, examples):
                requests.append(
                    DryRunRequest(
                        stage=stage,
                        system=request.system,
                        user="\n\n".join(m.content for m in request.messages),
                        input_tokens=pricing.estimate_tokens(request.text),
                        output_tokens=out_tokens,
                    )
                )
            for row in agent_requests(stages, examples):
                tokens = row.input_tokens + row.cache_read + row.cache_write
                requests.append(DryRunRequest(stage=row.stage, system=row.system, user=row.user,
                                              input_tokens=tokens, output_tokens=row.output_tokens))
        cost = stages_cost(stages, model, examples) if sends_prompts else 0.0
        rows.append(DryRunFeature(feature=feature, requests=requests, cost_usd=cost))
    costs = [r.cost_usd for r in rows]
    return DryRun(
        sae_id=sae_id,
        backend=backend,
        model=model,
        backend_reason=backend_reason,
        n_skipped=n_skipped,
        features=rows,
        input_tokens=sum(q.input_tokens for r in rows for q in r.requests),
        output_tokens=sum(q.output_tokens for r in rows for q in r.requests),
        cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        note=(_ESTIMATE_NOTE + (_AGENT_NOTE if agent else "")) if sends_prompts
        else "the baseline sends no prompts",
    )
