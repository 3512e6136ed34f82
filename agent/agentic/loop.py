"""The LLM agent: a conversation with the tools, bounded by the limits, ending in one committed label.

    outcome = await run_agent(view, oneshot, llm, prefix=examples_text, limits=Limits())

The first explanation (one-shot) is tried on the validation half before the first turn and is
told to the model. Each turn the model may call tools (any number, each counted); a turn without a
call gets a nudge. The run ends when the model commits, or at a limit (tool calls, turns), or when
it repeats itself (the same call three times), or on a provider error (recorded, never raised):
then the best validated hypothesis is committed and the trace says so. The conversation's system
text and the examples (`prefix`) are the same in every turn, and marked cacheable.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import prompts
from agent.agentic.outcome import AgentOutcome, settle
from agent.agentic.tools import TOOLS, Hypothesis, Limits, Toolbox
from agent.agentic.trace import Stopped, note
from agent.agentic.view import AgentView, SeenProtein
from agent.explain import Explanation
from agent.llm import LLMError, Usage
from agent.llm.chat import ChatRequest, ChatTurn, ToolDef, ToolOutput
from agent.metadata import clean
from agent.simulate import build_trial_request

PROMPT_NAME = "agent"
REPEATS = 3  # the same call this often: the model is looping
MAX_TOKENS = 2048


def tool_defs() -> tuple[ToolDef, ...]:
    return tuple(ToolDef(t.name, t.description, t.schema()) for t in TOOLS)


def llm_simulator(llm: Any, sae_id: str, feature: int):
    """try_explanation through the LLM simulator (the simulate prompt, its proteins in the cached
    system block: agent/simulate.py `build_trial_request`), on the proteins given."""

    async def simulate(hypothesis: Hypothesis, proteins: list[SeenProtein]) -> tuple[list[float], Usage]:
        explanation = Explanation(
            sae_id=sae_id,
            feature=feature,
            label=hypothesis.label,
            description=hypothesis.description,
            concepts=hypothesis.concepts,
            confidence=hypothesis.confidence if hypothesis.confidence is not None else 0.5,
        )
        result = await llm.generate(build_trial_request(explanation, [p.protein for p in proteins]))
        by_accession = result.parsed.model_dump(by_alias=True)
        return [float(by_accession[p.accession]) for p in proteins], result.usage

    return simulate


def system_text(limits: Limits) -> str:
    return prompts.load(PROMPT_NAME).render("system", **limits.model_dump())


def first_text(oneshot: Hypothesis) -> str:
    r = "not defined" if oneshot.validation_r is None else f"{oneshot.validation_r:.2f}"
    return prompts.load(PROMPT_NAME).render(
        "user",
        label=clean(oneshot.label),
        description=clean(oneshot.description),
        concepts="; ".join(clean(c) for c in oneshot.concepts) or "(none)",
        validation_r=r,
    )


async def run_agent(
    view: AgentView, oneshot: Explanation, llm: Any, *, prefix: str, limits: Limits | None = None
) -> AgentOutcome:
    """Investigate, revise, commit. `prefix`: the examples as the explain prompt shows them."""
    limits = limits or Limits()
    toolbox = Toolbox(view, llm_simulator(llm, view.sae_id, view.feature), limits)
    first = Hypothesis(oneshot.label, oneshot.description, list(oneshot.concepts), oneshot.confidence)
    usage = Usage()
    stopped: Stopped = "committed"
    reason: str | None = None
    turns = 0
    try:
        await toolbox.try_hypothesis(first)
    except LLMError as exc:
        usage = usage + exc.usage
        stopped, reason = "error", f"the first explanation could not be tried: {exc.reason}"
    conversation: list[ChatTurn] = [ChatTurn("user", text=first_text(first), cached_prefix=prefix)]
    system, tools = system_text(limits), tool_defs()
    seen: Counter[str] = Counter()
    while stopped == "committed" and toolbox.committed is None:
        if turns >= limits.max_turns:
            stopped, reason = (
                "turn_limit",
                f"the turn limit ({limits.max_turns}) was reached without a commit",
            )
            break
        if toolbox.calls_left <= 0:
            stopped, reason = "tool_limit", f"the tool-call limit ({limits.max_tool_calls}) was reached"
            break
        try:
            reply = await llm.converse(ChatRequest(system, tuple(conversation), tools, MAX_TOKENS))
        except LLMError as exc:
            usage = usage + exc.usage
            stopped, reason = "error", exc.reason
            break
        turns += 1
        usage = usage + reply.usage
        if reply.text.strip():
            toolbox.steps.append(note(reply.text))
        conversation.append(ChatTurn("assistant", text=reply.text, tool_calls=reply.tool_calls))
        if not reply.tool_calls:
            conversation.append(ChatTurn("user", text=prompts.load(PROMPT_NAME).render("nudge")))
            continue
        outputs = []
        for call in reply.tool_calls:
            signature = f"{call.name}:{json.dumps(call.arguments, sort_keys=True, default=str)}"
            seen[signature] += 1
            if toolbox.calls_left <= 0:
                outputs.append(ToolOutput(call.id, '{"error":"tool-call limit reached"}', True))
                continue
            result = await toolbox.call(call.name, call.arguments)
            outputs.append(ToolOutput(call.id, result.content, not result.ok))
            if call.name == "try_explanation" and not result.ok and toolbox.simulations_left <= 0:
                stopped, reason = (
                    "simulation_limit",
                    (f"the simulation limit ({limits.max_simulations}) was reached without a commit"),
                )
        conversation.append(ChatTurn("user", tool_outputs=tuple(outputs)))
        if toolbox.committed is not None:
            break
        if max(seen.values()) >= REPEATS:
            stopped, reason = "error", f"the model repeated the same call {REPEATS} times"
    if (
        toolbox.committed is not None
        and toolbox.committed.validation_r is None
        and toolbox.simulations_left > 0
    ):
        try:  # a committed label it never tried: try it, so it competes on validation r
            await toolbox.try_hypothesis(toolbox.committed)
        except LLMError as exc:
            usage = usage + exc.usage
        except Exception:  # noqa: BLE001 - the trial tool's own errors leave it untried
            pass
    if toolbox.committed is not None and stopped != "committed":
        stopped = "committed"
    if toolbox.committed is None and stopped == "committed":
        stopped, reason = "error", "the model stopped without committing"
    return settle(
        toolbox, first, stopped=stopped, reason=reason, turns=turns, agent="llm", usage=usage + toolbox.usage
    )
