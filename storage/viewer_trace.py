"""The agent's trace (labels.trace, JSON; contract in TRACE.md) as HTML: the one-shot explanation and
its score, each hypothesis, tool call and note in order, and what was committed and why it stopped.

The trace is untrusted twice over (LLM text, and a JSON column anyone could edit): it is parsed
defensively, every value is escaped, and anything of an unexpected shape is shown as text or skipped.
"""

from __future__ import annotations

import json
from typing import Any

from storage.viewer_common import esc, fmt

_MAX_ARGS = 300  # characters of a tool call's arguments shown


def parse_trace(text: str | None) -> dict[str, Any] | None:
    """The trace object, or None where there is none or it is not a JSON object."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _explanation(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    return (f"<b class=\"label\">{esc(item.get('label'))}</b> "
            f"<span class=\"muted\">validation r {fmt(_num(item.get('validation_r')))}</span>"
            f"<div class=\"description\">{esc(item.get('description'))}</div>")


def _step(step: Any) -> str:
    if not isinstance(step, dict):
        return f"<li class=\"step\">{esc(step)}</li>"
    kind = step.get("kind")
    if kind == "hypothesis":
        return f"<li class=\"step hyp\"><span class=\"kind\">hypothesis</span> {_explanation(step)}</li>"
    if kind == "tool":
        args = json.dumps(step.get("args"), ensure_ascii=False, sort_keys=True)
        if len(args) > _MAX_ARGS:
            args = args[:_MAX_ARGS] + "…"
        ok = "" if step.get("ok", True) else " <span class=\"badge no\">failed</span>"
        return (f"<li class=\"step tool\"><span class=\"kind\">tool</span> "
                f"<code>{esc(step.get('tool'))}</code>"
                f"<code class=\"args\">{esc(args)}</code>{ok}"
                f"<div class=\"summary\">{esc(step.get('summary'))}</div></li>")
    if kind == "note":
        return (f"<li class=\"step note\"><span class=\"kind\">note</span> "
                f"<span>{esc(step.get('text'))}</span></li>")
    return f"<li class=\"step\"><span class=\"kind\">{esc(kind)}</span></li>"


def trace_html(trace_text: str | None, oneshot_pearson: float | None, pearson: float | None) -> str:
    """The trace section's body; '' where the label has no trace (no agent ran)."""
    trace = parse_trace(trace_text)
    if trace is None:
        if trace_text:
            return "<p class=\"muted\">The stored agent trace could not be read.</p>"
        return ""
    steps = trace.get("steps") if isinstance(trace.get("steps"), list) else []
    committed = trace.get("committed") if isinstance(trace.get("committed"), dict) else {}
    stopped = trace.get("stopped")
    reason = trace.get("reason")
    counts = ", ".join(f"{esc(trace.get(k))} {name}" for k, name in
                       (("tool_calls", "tool calls"), ("simulations", "simulations"), ("turns", "turns"))
                       if trace.get(k) is not None)
    scores = (f"<div class=\"scores\"><div>one-shot test r<b>{fmt(oneshot_pearson)}</b></div>"
              f"<div>final test r<b>{fmt(pearson)}</b></div></div>")
    stop = (f"<p>Stopped: <b>{esc(stopped)}</b>{': ' + esc(reason) if reason else ''}"
            f"{' · ' + counts if counts else ''}"
            f"{' · agent ' + esc(trace.get('agent')) if trace.get('agent') else ''}</p>")
    source = committed.get("source")
    source_html = f" <span class=\"muted\">({esc(source)})</span>" if source else ""
    committed_html = (
        f"<div class=\"committed\"><span class=\"kind\">committed</span>{source_html} "
        f"{_explanation(committed)}</div>" if committed else "")
    return (
        f"{scores}{stop}"
        "<div class=\"oneshot\"><span class=\"kind\">one-shot</span> "
        f"{_explanation(trace.get('oneshot'))}</div>"
        f"<ol class=\"trace\">{''.join(_step(s) for s in steps)}</ol>{committed_html}"
    )
