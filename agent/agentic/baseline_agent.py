"""The offline agent: no LLM, deterministic. It makes the agent's lift measurable without a provider.

1. The one-shot (baseline) explanation is tried on the validation half.
2. Terms (concepts, keywords, locations, organisms: agent/agentic/hypothesis.py) of the firing
   proteins are ranked by the Pearson r between their presence and the activations, over the
   screening proteins: the examples and the other indexed proteins the view offers (never the
   validation half); terms present on the same proteins count once.
3. Candidate rules: the best terms singly, and pairs of them joined by AND and by OR; each is
   screened the same way, and the best few, as many as the simulation limit leaves, are tried on
   the validation half.
4. The hypothesis with the best validation r is committed (the one-shot on ties).

Its simulator predicts from metadata only: a rule's proteins at the mean activation of the examples
it holds for, the others at the mean of the rest; the one-shot as `simulate_baseline` does.
"""

from __future__ import annotations

from itertools import combinations

from agent.agentic.hypothesis import Rule, Term, predict, terms_of
from agent.agentic.outcome import AgentOutcome, settle
from agent.agentic.tools import Hypothesis, Limits, Toolbox
from agent.agentic.view import AgentView, SeenProtein
from agent.baseline import protein_concepts
from agent.explain import MAX_LABEL_WORDS, Explanation
from agent.llm import Usage
from agent.score import pearson
from agent.simulate import SCALE_MAX

N_TERMS = 8  # best terms considered singly
N_PAIRED = 4  # best terms paired among themselves
N_WITH_BEST = 14  # terms paired with the best one
MIN_SUPPORT = 2  # firing examples that must show a term


def rule_levels(rule: Rule, examples: tuple[SeenProtein, ...]) -> tuple[float, float]:
    inside = [e.normalized for e in examples if rule.holds(e.protein)]
    outside = [e.normalized for e in examples if not rule.holds(e.protein)]
    high = sum(inside) / len(inside) if inside else 1.0
    low = sum(outside) / len(outside) if outside else 0.0
    return high, min(low, high)


def concept_levels_predict(
    concepts: list[str], examples: tuple[SeenProtein, ...], proteins: list[SeenProtein]
) -> list[float]:
    """`simulate_baseline`'s prediction (agent/baseline.py) from the examples the view holds."""
    sets = [protein_concepts(e.protein) for e in examples]
    levels: dict[str, float] = {}
    for concept in concepts:
        carrying = [e.normalized for e, cs in zip(examples, sets, strict=True) if concept in cs]
        if carrying:
            levels[concept] = sum(carrying) / len(carrying)
    without = [e.normalized for e, cs in zip(examples, sets, strict=True) if not any(c in cs for c in levels)]
    floor = sum(without) / len(without) if without else 0.0
    out = []
    for p in proteins:
        have = protein_concepts(p.protein)
        hits = [level for concept, level in levels.items() if concept in have]
        out.append(round(SCALE_MAX * (max(hits) if hits else floor), 3))
    return out


def rule_simulator(view: AgentView):
    """The baseline's simulator: rules by `predict`, plain explanations by their concepts."""

    async def simulate(hypothesis: Hypothesis, proteins: list[SeenProtein]) -> tuple[list[float], Usage]:
        if hypothesis.rule is not None:
            high, low = rule_levels(hypothesis.rule, view.examples)
            return predict(hypothesis.rule, [p.protein for p in proteins], high, low), Usage()
        return concept_levels_predict(hypothesis.concepts, view.examples, proteins), Usage()

    return simulate


def _specificity(term: Term) -> tuple[int, int]:
    """Among terms alike on the screening proteins, the one to name: a concept, then the longest name."""
    order = {"concept": 3, "location": 2, "keyword": 2, "organism": 1, "text": 0}
    return order[term.field], len(term.value)


def ranked_terms(screen: list[SeenProtein]) -> list[tuple[Term, float]]:
    """Terms of the firing screening proteins by the r between their presence and the activations.

    Terms present on exactly the same proteins ("Transmembrane", "Keyword Transmembrane helix") are one
    signal: only the most specific of them is kept, so the pairs below combine different signals."""
    activations = [p.normalized for p in screen]
    sets = [terms_of(p.protein) for p in screen]
    every = {t for s, a in zip(sets, activations, strict=True) if a > 0 for t in s}
    by_pattern: dict[tuple[bool, ...], Term] = {}
    for term in sorted(every, key=lambda t: (t.field, t.value)):
        pattern = tuple(term in s for s in sets)
        if sum(p and a > 0 for p, a in zip(pattern, activations, strict=True)) < MIN_SUPPORT:
            continue
        kept = by_pattern.get(pattern)
        if kept is None or _specificity(term) > _specificity(kept):
            by_pattern[pattern] = term
    scored = []
    for pattern, term in by_pattern.items():
        r = pearson([float(p) for p in pattern], activations)
        if r is not None and r > 0:
            scored.append((term, r))
    scored.sort(key=lambda item: (-item[1], item[0].field != "concept", item[0].value))
    return scored


def candidate_rules(screen: list[SeenProtein]) -> list[tuple[Rule, float]]:
    """Single terms and AND / OR pairs, by their r on the screening proteins; rules alike there once."""
    terms = [t for t, _ in ranked_terms(screen)]
    rules = [Rule(terms=(t,)) for t in terms[:N_TERMS]]
    # The best term restricted by, or joined with, each of the next ones; and the best few among themselves.
    pairs = [(terms[0], t) for t in terms[1:N_WITH_BEST]] if terms else []
    pairs += [p for p in combinations(terms[1:N_PAIRED], 2)]
    for a, b in pairs:
        rules += [Rule(terms=(a, b), op="AND"), Rule(terms=(a, b), op="OR")]
    activations = [p.normalized for p in screen]
    sets = [terms_of(p.protein) for p in screen]
    seen_patterns: set[tuple[bool, ...]] = set()
    scored = []
    for rule in rules:
        join = all if rule.op == "AND" else any
        pattern = tuple(join(t in s for t in rule.terms) for s in sets)
        r = pearson([float(x) for x in pattern], activations)
        if r is None or pattern in seen_patterns:
            continue
        seen_patterns.add(pattern)
        scored.append((rule, r))
    scored.sort(key=lambda item: -item[1])
    return scored


def describe(rule: Rule) -> Hypothesis:
    words = {"AND": "together with", "OR": "or"}[rule.op]
    parts = [t.text() for t in rule.terms]
    label = " ".join(f" {rule.op.lower()} ".join(parts).split()[:MAX_LABEL_WORDS])
    description = (
        f"Fires on proteins whose Swiss-Prot record shows {f' {words} '.join(parts)}"
        + (" (both required)." if rule.op == "AND" and len(parts) > 1 else ".")
        + " Silent on proteins without."
    )
    concepts = [
        t.value
        if t.field == "concept"
        else f"Keyword {t.value}"
        if t.field in ("keyword", "location")
        else f"Organism {t.value}"
        if t.field == "organism"
        else t.value
        for t in rule.terms
    ]
    return Hypothesis(label, description, concepts, rule=rule)


async def run_baseline_agent(view: AgentView, oneshot: Explanation, limits: Limits) -> AgentOutcome:
    toolbox = Toolbox(view, rule_simulator(view), limits)
    first = Hypothesis(oneshot.label, oneshot.description, list(oneshot.concepts), oneshot.confidence)
    await toolbox.try_hypothesis(first)
    # Screened on the examples and the other indexed proteins, never on the validation half they are tried on.
    screen = [p for p in view.population() if p.role != "validation"]
    candidates = candidate_rules(screen)
    # Evidence for the trace (each counts as a tool call): how the best terms fire across the corpus.
    for rule, _ in candidates[:2]:
        if toolbox.calls_left <= 1:
            break
        term = rule.terms[0]
        if len(rule.terms) == 1:
            await toolbox.call("search_proteins", {term.field: term.value})
    stopped, reason = "committed", None
    for rule, _ in candidates:
        if toolbox.simulations_left <= 0:
            break
        if toolbox.calls_left <= 1:
            stopped, reason = "tool_limit", f"the tool-call limit ({limits.max_tool_calls}) was reached"
            break
        await toolbox.call_trial(describe(rule))
    best = toolbox.best() or first
    if toolbox.calls_left > 0:
        await toolbox.call(
            "commit_label",
            {
                "label": best.label,
                "description": best.description,
                "concepts": best.concepts,
                "confidence": round(max(0.0, min(1.0, best.validation_r or 0.0)), 3),
            },
        )
    return settle(
        toolbox, first, stopped=stopped, reason=reason, turns=0, agent="baseline", usage=toolbox.usage
    )
