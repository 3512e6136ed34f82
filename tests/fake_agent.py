"""The scripted model behind the fake server's tool use (tests/fake_llm.py), for both APIs.

A conversation whose tools include `commit_label` is an agent run. The fake model reads its
examples (the first user message) and the tool results so far, and plays one turn:

- turn 1: `search_proteins` and `concept_f1` on the concept most enriched among the strong examples;
- turn 2: `try_explanation` of the best concept alone, of it AND the runner-up (a concept, keyword or
  organism), and of it OR the runner-up;
- turn 3: `commit_label` of the trial with the best validation r in the tool results.

`FakeLLM.agent_script` (consumed one action per turn, then "normal") makes it misbehave: "unknown_tool",
"bad_args", "text" (answers without a call), "loop" (the same call again), "commit_untried",
"no_commit" (never commits: text only, every turn).
The fake simulator (`derive_simulation`) reads a concept "A AND B" as needing both.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

_ORGANISM_RE = re.compile(r"^organism: ([^(\n]+)", re.M)
_R_RE = re.compile(r'"validation_r":(-?[0-9.]+|null)')


def ranked_concepts(prompt: str, n: int = 3) -> list[str]:
    """Concepts (annotations, keywords, organisms) by enrichment among strong examples against silent ones."""
    from tests.fake_llm import _EXAMPLE_RE, _candidates

    active: Counter[str] = Counter()
    silent: Counter[str] = Counter()
    carriers: dict[str, set[int]] = {}  # which examples show each concept
    n_active = n_silent = 0
    for i, (activation, block) in enumerate(_EXAMPLE_RE.findall(prompt)):
        names = {c for _, c in _candidates(block)}
        names |= {"Organism " + m.strip() for m in _ORGANISM_RE.findall(block)}
        for name in names:
            carriers.setdefault(name, set()).add(i)
        if int(activation) >= 5:
            n_active += 1
            active.update(names)
        elif int(activation) == 0:
            n_silent += 1
            silent.update(names)
    score = {c: active[c] / max(n_active, 1) - silent[c] / max(n_silent, 1) for c in active}
    ranked = sorted(score, key=lambda c: (-score[c], -len(c), c))
    out: list[str] = []
    for concept in ranked:
        if any(concept in kept or kept in concept or carriers[concept] == carriers[kept] for kept in out):
            continue  # "Zinc finger" beside "Zinc finger C2H2-type", or shown by the same examples: one
        out.append(concept)
        if len(out) == n:
            break
    return out


def _hypothesis(concepts: list[str], joined: str) -> dict[str, Any]:
    name = f" {joined} ".join(concepts) if joined else concepts[0]
    return {"label": " ".join(name.split()[:8]), "description": f"Fires on proteins annotated with {name}.",
            "concepts": [name]}


def agent_turn(prompt: str, results: list[str], turn: int, action: str) -> tuple[str, list[tuple[str, dict]]]:
    """(text, [(tool, arguments)]) of the fake model's next turn."""
    concepts = ranked_concepts(prompt) or ["Unclear"]
    top = concepts[0]
    if action == "unknown_tool":
        return "Let me use a tool I imagine.", [("read_test_half", {"all": True})]
    if action == "bad_args":
        return "", [("concept_f1", {"concept": 42, "extra": "x"})]
    if action in ("text", "no_commit"):
        return "I think it is about " + top + ".", []
    if action == "loop":
        return "", [("search_proteins", {"concept": top})]
    if action == "commit_untried":
        return "", [("commit_label", {**_hypothesis([top], ""), "confidence": 0.6})]
    if turn == 0:
        first = {"keyword": top.removeprefix("Keyword ")} if top.startswith("Keyword ") else \
            {"organism": top.removeprefix("Organism ")} if top.startswith("Organism ") else {"concept": top}
        calls = [("search_proteins", first)]
        if not top.startswith(("Keyword ", "Organism ")):
            calls.append(("concept_f1", {"concept": top}))
        return "Checking the most enriched concept first.", calls
    if turn == 1:
        trials = [_hypothesis([top], "")]
        if len(concepts) > 1:
            trials += [_hypothesis([top, concepts[1]], "AND"), _hypothesis([top, concepts[1]], "OR")]
        return "Trying competing explanations.", [("try_explanation", t) for t in trials]
    trials = [_hypothesis([top], "")]
    if len(concepts) > 1:
        trials += [_hypothesis([top, concepts[1]], "AND"), _hypothesis([top, concepts[1]], "OR")]
    scores = []
    for content in results[-len(trials):]:
        match = _R_RE.search(content)
        scores.append(float(match.group(1)) if match and match.group(1) != "null" else -2.0)
    best = trials[max(range(len(scores)), key=scores.__getitem__)] if scores else trials[0]
    return "Committing the best trial.", [("commit_label", {**best, "confidence": 0.8})]


def transcript(messages: list[dict], api: str) -> tuple[str, list[str], int]:
    """(first user text, tool result contents in order, assistant turns so far) of a request body."""
    first, results, turns = "", [], 0
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "assistant":
            turns += 1
        elif role == "tool":
            results.append(str(content))
        elif role == "user":
            if isinstance(content, str):
                first = first or content
                continue
            for block in content or []:
                if block.get("type") == "tool_result":
                    results.append(str(block.get("content")))
                elif block.get("type") == "text" and not first:
                    first = block.get("text", "")
                elif block.get("type") == "text" and turns == 0:
                    first += "\n\n" + block.get("text", "")
    return first, results, turns


def anthropic_message(body: dict, action: str, usage: dict) -> dict[str, Any]:
    prompt, results, turns = transcript(body.get("messages", []), "anthropic")
    text, calls = agent_turn(prompt, results, turns, action)
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": f"toolu_{turns}_{i}", "name": n, "input": a}
                for i, (n, a) in enumerate(calls)]
    return {"id": "msg_fake_agent", "type": "message", "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content or [{"type": "text", "text": "(thinking)"}],
            "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None, "usage": usage}


def openai_completion(body: dict, action: str, usage: dict) -> dict[str, Any]:
    prompt, results, turns = transcript(body.get("messages", []), "openai")
    text, calls = agent_turn(prompt, results, turns, action)
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [{"id": f"call_{turns}_{i}", "type": "function",
                                  "function": {"name": n, "arguments": json.dumps(a)}}
                                 for i, (n, a) in enumerate(calls)]
    return {"id": "chatcmpl-fake-agent", "object": "chat.completion", "created": 0,
            "model": body.get("model", "unknown"),
            "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop", "logprobs": None,
                         "message": message}], "usage": usage}
