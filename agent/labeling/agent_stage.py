"""The agent as a stage of the labeling protocol (`plmlabel label --agent`), between explain and simulate.

    stages = [explain, AgentStage(...), simulate]

`run(work, llm)` sees the feature only through an `AgentView` (examples and validation half), runs
the LLM agent (agent/agentic/loop.py) or, with no LLM, the baseline agent, and leaves in `work`
the committed explanation (which the simulate stage then scores once on the test half), the trace,
and the one-shot explanation's test score. That score is computed only after the commit, from a
simulation of the one-shot explanation on the test half; where the one-shot explanation is the
committed one, the final score is the same number and no second simulation is sent.

Both transports run it in-line; under `--batch` its requests are sent at once, at full price.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.agentic.baseline_agent import concept_levels_predict, run_baseline_agent
from agent.agentic.hypothesis import Rule
from agent.agentic.loop import run_agent
from agent.agentic.tools import Limits
from agent.agentic.view import AgentView, Corpus, SeenProtein
from agent.explain import Explanation, build_explain_request
from agent.labeling.protocol import CallStage, FeatureWork
from agent.llm import LLMBackend, Usage
from agent.score import pearson
from agent.simulate import Simulation, build_simulate_request
from sae.index import FeatureExamples

ONESHOT_IS_FINAL = "agent_oneshot_final"  # work.pending: the committed label is the one-shot one
RULE = "agent_rule"  # work.pending: the baseline agent's committed rule (its simulator reads it)


class AgentStage(CallStage):
    name = "agent"
    prompt = "agent"

    def __init__(self, limits: Limits | None = None, *, baseline: bool = False) -> None:
        self.limits = limits or Limits()
        self.baseline = baseline
        self.corpus: Corpus | None = None  # set by the job once the database is open (setup.py)
        if baseline:
            self.prompt = None

    async def run(self, work: FeatureWork, llm: LLMBackend | None) -> Usage:
        assert work.explanation is not None
        examples = work.examples
        oneshot = work.explanation
        if not examples.validation:
            why = (
                "the index has no validation half (format 1): rerun `plmlabel index`"
                if not examples.has_validation
                else "the feature has no validation proteins"
            )
            work.trace = _skipped_trace(oneshot, why, "baseline" if self.baseline else "llm")
            work.pending[ONESHOT_IS_FINAL] = True
            return Usage()
        view = AgentView.of(examples, self.corpus)
        if self.baseline or llm is None:
            outcome = await run_baseline_agent(view, oneshot, self.limits)
        else:
            prefix = build_explain_request(examples).messages[0].content
            outcome = await run_agent(view, oneshot, llm, prefix=prefix, limits=self.limits)
        usage = outcome.usage
        committed = outcome.committed
        work.trace = outcome.trace
        if outcome.is_oneshot:
            work.pending[ONESHOT_IS_FINAL] = True
        else:
            work.explanation = Explanation(
                sae_id=examples.sae_id,
                feature=examples.feature,
                label=committed.label,
                description=committed.description,
                concepts=committed.concepts,
                confidence=committed.confidence if committed.confidence is not None else 0.5,
            )
            if committed.rule is not None:
                work.pending[RULE] = committed.rule.model_dump()
            # The commit is made: only now is the one-shot explanation scored on the test half.
            work.test_pearson, spent = await _oneshot_test_r(oneshot, work, llm, view, self.baseline)
            usage = usage + spent
        return usage


async def _oneshot_test_r(
    oneshot: Explanation, work: FeatureWork, llm: LLMBackend | None, view: AgentView, baseline: bool
) -> tuple[float | None, Usage]:
    examples = work.examples
    if not examples.heldout:
        return None, Usage()
    if baseline or llm is None:
        test = [SeenProtein(p, 0.0, "validation") for p in examples.heldout]
        predicted = concept_levels_predict(list(oneshot.concepts), view.examples, test)
        return pearson(predicted, examples.heldout_normalized), Usage()
    result = await llm.generate(build_simulate_request(oneshot, examples.heldout))
    by_accession = result.parsed.model_dump(by_alias=True)
    predicted = [float(by_accession[p.accession]) for p in examples.heldout]
    return pearson(predicted, examples.heldout_normalized), result.usage


def rule_simulation(work: FeatureWork) -> Simulation | None:
    """The test-half simulation of a committed baseline rule (None when the committed label has none)."""
    from agent.agentic.baseline_agent import rule_levels
    from agent.agentic.hypothesis import predict

    data = work.pending.get(RULE)
    if not data:
        return None
    rule = Rule.model_validate(data)
    examples = work.examples
    seen = tuple(SeenProtein(e.protein, e.normalized, "example") for e in examples.examples)
    high, low = rule_levels(rule, seen)
    return Simulation(
        sae_id=examples.sae_id,
        feature=examples.feature,
        accessions=tuple(p.accession for p in examples.heldout),
        predicted=tuple(predict(rule, list(examples.heldout), high, low)),
    )


def _skipped_trace(oneshot: Explanation, why: str, agent: str) -> dict[str, Any]:
    from agent.agentic.tools import Hypothesis
    from agent.agentic.trace import build_trace

    first = Hypothesis(oneshot.label, oneshot.description, list(oneshot.concepts), oneshot.confidence)
    return build_trace(
        oneshot=first,
        steps=[],
        committed=first,
        source="oneshot",
        stopped="error",
        reason=why,
        tool_calls=0,
        simulations=0,
        turns=0,
        agent=agent,
    )  # type: ignore[arg-type]


# --- estimates ------------------------------------------------------------------------------------------
TOOL_RESULT_TOKENS = 180  # a compact tool result
CALL_TOKENS = 90  # the model's text and one call's arguments
NUDGE_TOKENS = 20


@dataclass(frozen=True)
class AgentEstimate:
    """One kind of agent request, summed over a feature at the limits."""

    stage: str
    system: str
    user: str
    input_tokens: int  # uncached
    output_tokens: int
    cache_read: int = 0
    cache_write: int = 0


def estimate_agent(limits: Limits, examples: FeatureExamples) -> list[AgentEstimate]:
    """Tokens of the agent on one feature if it uses every turn, tool call and trial (an upper bound):
    its turns (the shared prefix written to the prompt cache once, then read) and its simulations
    (the trials on the validation half, the one-shot's validation and test runs)."""
    from agent.agentic.loop import first_text, system_text, tool_defs
    from agent.agentic.tools import Hypothesis
    from agent.labeling.protocol import placeholder_work
    from agent.pricing import estimate_tokens

    work = placeholder_work(examples)
    assert work.explanation is not None
    system = system_text(limits) + json.dumps([t.schema for t in tool_defs()])
    prefix = build_explain_request(examples).messages[0].content
    first = first_text(
        Hypothesis(work.explanation.label, work.explanation.description, work.explanation.concepts)
    )
    shared = estimate_tokens(system) + estimate_tokens(prefix)
    turns = limits.max_turns
    calls_per_turn = max(1, -(-limits.max_tool_calls // turns))
    tail = estimate_tokens(first)
    uncached = 0
    for _ in range(turns):
        uncached += tail
        tail += calls_per_turn * (TOOL_RESULT_TOKENS + CALL_TOKENS) + NUDGE_TOKENS
    output = turns * calls_per_turn * CALL_TOKENS
    proteins = examples.validation or examples.heldout
    simulate = build_simulate_request(work.explanation, proteins)
    sim_in = estimate_tokens(simulate.text)
    sim_out = 20 + 10 * len(proteins)
    runs = limits.max_simulations + 1  # the trials (the one-shot's among them) + the one-shot on test
    return [
        AgentEstimate(
            stage=f"agent: {turns} turns, {limits.max_tool_calls} tool calls (at most)",
            system=system,
            user=prefix + "\n\n" + first,
            input_tokens=uncached,
            output_tokens=output,
            cache_read=shared * (turns - 1),
            cache_write=shared,
        ),
        AgentEstimate(
            stage=f"agent: {runs} simulations (at most)",
            system=simulate.system,
            user="\n\n".join(m.content for m in simulate.messages),
            input_tokens=sim_in * runs,
            output_tokens=sim_out * runs,
        ),
    ]
