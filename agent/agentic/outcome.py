"""What an agent run ends with (both agents): the committed hypothesis, why it stopped, its trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.agentic.tools import Hypothesis, Toolbox
from agent.agentic.trace import Source, Stopped, build_trace
from agent.llm import Usage


@dataclass
class AgentOutcome:
    committed: Hypothesis
    source: Source
    stopped: Stopped
    reason: str | None
    tool_calls: int
    simulations: int
    turns: int
    usage: Usage = field(default_factory=Usage)
    trace: dict[str, Any] = field(default_factory=dict)

    @property
    def is_oneshot(self) -> bool:
        return self.source == "oneshot"


def settle(
    toolbox: Toolbox,
    oneshot: Hypothesis,
    *,
    stopped: Stopped,
    reason: str | None,
    turns: int,
    agent: str,
    usage: Usage,
    steps: list[dict[str, Any]] | None = None,
) -> AgentOutcome:
    """Commit the best validated hypothesis: the model's own commit when it is at least as good as
    every other tried one, else the best tried (the one-shot on ties), and say which."""
    best = toolbox.best() or oneshot
    chosen = toolbox.committed
    notes: list[str] = [reason] if reason else []
    if (
        chosen is not None
        and chosen.validation_r is not None
        and chosen.validation_r >= (best.validation_r or -1.0)
    ):
        match = next((h for h in toolbox.hypotheses if h.key() == chosen.key()), None)
        committed = match or chosen
        committed.confidence = chosen.confidence
        source: Source = "oneshot" if committed is oneshot else "agent"
    else:
        committed = best
        source = "oneshot" if best is oneshot else "best_so_far"
        if chosen is None:
            notes.append("no label was committed; the best validated hypothesis is stored")
        elif chosen.validation_r is None:
            notes.append("the committed label was not validated; the best validated hypothesis is stored")
        else:
            notes.append(
                f"the committed label (validation r {chosen.validation_r:.2f}) was beaten by "
                f"{best.label!r} (r {best.validation_r or 0:.2f}), stored instead"
            )
    trace = build_trace(
        oneshot=oneshot,
        steps=steps if steps is not None else toolbox.steps,
        committed=committed,
        source=source,
        stopped=stopped,
        reason="; ".join(notes) or None,
        tool_calls=toolbox.tool_calls,
        simulations=toolbox.simulations,
        turns=turns,
        agent=agent,
    )  # type: ignore[arg-type]
    return AgentOutcome(
        committed,
        source,
        stopped,
        trace["reason"],
        toolbox.tool_calls,
        toolbox.simulations,
        turns,
        usage,
        trace,
    )
