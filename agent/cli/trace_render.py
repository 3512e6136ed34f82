"""`plmlabel show`: the agent's trace (labels.trace, TRACE.md) as terminal text. All of it is data:
model text and Swiss-Prot words go out through `data_text` (control characters stripped, no markup)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.text import Text

from agent.cli.safe_text import data_text

STEPS_SHOWN = 40


def _r(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def render_trace(console: Console, trace_json: str | None, oneshot_pearson: float | None,
                 pearson: float | None) -> None:
    if not trace_json:
        return
    try:
        trace = json.loads(trace_json)
    except (TypeError, ValueError):
        console.print(Text("Agent trace: not readable JSON", style="yellow"))
        return
    if not isinstance(trace, dict):
        return
    console.print()
    committed = trace.get("committed") or {}
    head = Text(f"Agent ({trace.get('agent', '?')}): ", style="bold")
    head.append(f"{trace.get('tool_calls', 0)} tool calls, {trace.get('simulations', 0)} simulations, "
                f"{trace.get('turns', 0)} turns; stopped: {trace.get('stopped', '?')}; "
                f"committed: {committed.get('source', '?')}")
    console.print(head)
    oneshot = trace.get("oneshot") or {}
    line = Text("one-shot: ", style="dim")
    line.append_text(data_text(oneshot.get("label", "")))
    line.append(f"  validation r {_r(oneshot.get('validation_r'))} · test r {_r(oneshot_pearson)}")
    console.print(line)
    line = Text("committed: ", style="dim")
    line.append_text(data_text(committed.get("label", "")))
    line.append(f"  validation r {_r(committed.get('validation_r'))} · test r {_r(pearson)}")
    console.print(line)
    if trace.get("reason"):
        console.print(data_text(f"note: {trace['reason']}", style="yellow"), soft_wrap=True)
    steps = trace.get("steps") or []
    for i, step in enumerate(steps[:STEPS_SHOWN], start=1):
        kind = step.get("kind")
        if kind == "hypothesis":
            text = Text(f"{i:>3}. hypothesis ", style="cyan")
            text.append_text(data_text(step.get("label", "")))
            text.append(f"  validation r {_r(step.get('validation_r'))}")
        elif kind == "tool" and step.get("tool") == "try_explanation" and step.get("ok"):
            continue  # its hypothesis step says it
        elif kind == "tool":
            text = Text(f"{i:>3}. {'' if step.get('ok') else '✗ '}", style="" if step.get("ok") else "red")
            text.append(str(step.get("tool", "?"))[:40], style="magenta")
            text.append(" ")
            text.append_text(data_text(step.get("summary", "")))
        else:
            text = Text(f"{i:>3}. ", style="dim")
            text.append_text(data_text(step.get("text", ""), style="dim"))
        console.print(text, soft_wrap=True)
    if len(steps) > STEPS_SHOWN:
        console.print(Text(f"     … {len(steps) - STEPS_SHOWN} more steps (--json shows all)", style="dim"))
