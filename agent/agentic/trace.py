"""The trace JSON of one agent run (labels.trace): the contract in /work/wt/TRACE.md, version 1.

{"version": 1, "oneshot": {...}, "steps": [...], "committed": {...}, "stopped": ..., "reason": ...,
 "tool_calls": n, "simulations": n, "turns": n, "agent": "baseline" | "llm"}
"""

from __future__ import annotations

from typing import Any, Literal

from agent.agentic.tools import Hypothesis

VERSION = 1
Stopped = Literal["committed", "tool_limit", "simulation_limit", "turn_limit", "error"]
Source = Literal["agent", "best_so_far", "oneshot"]
NOTE_CHARS = 400


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def note(text: str) -> dict[str, Any]:
    """A note step: the model's text between calls, truncated."""
    text = " ".join(text.split())
    return {"kind": "note", "text": text[:NOTE_CHARS] + ("…" if len(text) > NOTE_CHARS else "")}


def build_trace(
    *,
    oneshot: Hypothesis,
    steps: list[dict[str, Any]],
    committed: Hypothesis,
    source: Source,
    stopped: Stopped,
    reason: str | None,
    tool_calls: int,
    simulations: int,
    turns: int,
    agent: Literal["baseline", "llm"],
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "oneshot": {
            "label": oneshot.label,
            "description": oneshot.description,
            "validation_r": _r(oneshot.validation_r),
        },
        "steps": steps,
        "committed": {
            "label": committed.label,
            "description": committed.description,
            "concepts": list(committed.concepts),
            "confidence": committed.confidence,
            "validation_r": _r(committed.validation_r),
            "source": source,
        },
        "stopped": stopped,
        "reason": reason if stopped != "committed" or reason else None,
        "tool_calls": tool_calls,
        "simulations": simulations,
        "turns": turns,
        "agent": agent,
    }


def check_trace(trace: Any) -> list[str]:
    """What is wrong with a trace against the contract ([] when it conforms): for tests and readers."""
    problems: list[str] = []
    if not isinstance(trace, dict) or trace.get("version") != VERSION:
        return ["not a version-1 trace object"]
    for key in (
        "oneshot",
        "steps",
        "committed",
        "stopped",
        "reason",
        "tool_calls",
        "simulations",
        "turns",
        "agent",
    ):
        if key not in trace:
            problems.append(f"missing {key}")
    kinds = {
        "hypothesis": {"label", "description", "validation_r"},
        "tool": {"tool", "args", "summary", "ok"},
        "note": {"text"},
    }
    for i, step in enumerate(trace.get("steps", [])):
        want = kinds.get(step.get("kind"))
        if want is None or not want <= set(step):
            problems.append(f"step {i} is malformed: {step}")
    if trace.get("stopped") not in ("committed", "tool_limit", "simulation_limit", "turn_limit", "error"):
        problems.append(f"bad stopped {trace.get('stopped')!r}")
    if trace.get("committed", {}).get("source") not in ("agent", "best_so_far", "oneshot"):
        problems.append("bad committed.source")
    return problems
