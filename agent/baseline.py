"""The baseline labeler: no LLM, only Swiss-Prot concept enrichment.

Explain: every concept of the example proteins (annotation types, annotation type + description or
ligand, keywords) is scored by the Pearson r between its presence and the examples' normalised
activations; the best concept names the feature. Near-ties go to the concept that annotates the
firing residues most often, then to the more specific (an annotation with its description before a
bare annotation type before a keyword). Where `plmlabel concepts` stored
top concepts for the feature and one of them is enriched among the examples, those win.

Simulate: a held-out protein is predicted at the mean activation of the examples that carry the
concepts it has (the best of them), and at the mean of the examples carrying none otherwise.

It runs offline, costs nothing, and is the reference every LLM result is reported beside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.explain import MAX_LABEL_WORDS, Explanation
from agent.metadata import UNINFORMATIVE_KEYWORDS, clean, informative, subtype
from agent.score import pearson
from agent.simulate import SCALE_MAX, Simulation
from sae.index import FeatureExamples
from storage.protein import Protein

MODEL_NAME = "baseline"
MIN_R = 0.5  # weakest association that may name a feature
MIN_SUPPORT = 2  # firing examples that must carry a concept
MAX_CONCEPTS = 3
NEAR_BEST = 0.1  # concepts within this r of the best are used for prediction too
TIE = 0.02  # concepts within this r of the best count as tied

_NON_WORD = re.compile(r"[^0-9a-z]+")

SPECIFIC, TYPE, KEYWORD = 2, 1, 0


def protein_concepts(protein: Protein, positions: set[int] | None = None) -> dict[str, int]:
    """The concepts a protein's metadata shows, each with its specificity (2 > 1 > 0).

    With `positions`, only the annotations covering one of those residues (and no keywords).
    """
    found: dict[str, int] = {}
    for feature in informative(protein):
        if positions is not None and not any(feature.covers(p) for p in positions):
            continue
        found[feature.type] = max(found.get(feature.type, TYPE), TYPE)
        detail = subtype(feature)
        if detail:
            found[f"{feature.type} {detail}"] = SPECIFIC
    if positions is None:
        for keyword in protein.keywords:
            if keyword not in UNINFORMATIVE_KEYWORDS:
                found.setdefault(f"Keyword {clean(keyword)}", KEYWORD)
    return found


def concept_key(name: str) -> str:
    """Case and punctuation folded, for matching concept names from other sources."""
    return _NON_WORD.sub(" ", name.lower()).strip()


@dataclass(frozen=True)
class ConceptScore:
    concept: str
    r: float
    specificity: int
    n_firing_with: int
    n_firing: int
    n_silent_with: int
    n_silent: int
    level: float  # mean normalised activation of the examples that carry it
    at_firing: int  # firing examples where it annotates a firing residue


def enriched_concepts(examples: FeatureExamples, restrict_to: set[str] | None = None) -> list[ConceptScore]:
    """Concepts of the example proteins ranked by association with their activations, best first."""
    concept_sets = [protein_concepts(e.protein) for e in examples.examples]
    at_firing_sets = [protein_concepts(e.protein, {r.position for r in e.firing if r.value > 0})
                      for e in examples.examples]
    activations = [max(e.normalized, 0.0) for e in examples.examples]
    firing = [a > 0 for a in activations]
    n_firing, n_silent = sum(firing), len(firing) - sum(firing)
    specificity: dict[str, int] = {}
    for concepts in concept_sets:
        for name, spec in concepts.items():
            specificity[name] = max(spec, specificity.get(name, 0))
    scores = []
    for name, spec in specificity.items():
        if restrict_to is not None and concept_key(name) not in restrict_to:
            continue
        present = [name in concepts for concepts in concept_sets]
        with_firing = sum(p and f for p, f in zip(present, firing, strict=True))
        if with_firing < MIN_SUPPORT:
            continue
        r = pearson([float(p) for p in present], activations)
        if r is None:
            continue
        carrying = [a for a, p in zip(activations, present, strict=True) if p]
        scores.append(ConceptScore(
            concept=name, r=r, specificity=spec, n_firing_with=with_firing, n_firing=n_firing,
            n_silent_with=sum(p and not f for p, f in zip(present, firing, strict=True)), n_silent=n_silent,
            level=sum(carrying) / len(carrying),
            at_firing=sum(name in at for at, f in zip(at_firing_sets, firing, strict=True) if f),
        ))
    scores.sort(key=lambda s: (-s.r, s.concept))
    if scores:
        # Near-ties (the examples cannot tell the concepts apart) go to the concept that annotates the
        # firing residues, then to the more specific one.
        near = [s for s in scores if s.r >= scores[0].r - TIE]
        best = max(near, key=lambda s: (s.at_firing, s.specificity, s.r, s.n_firing_with))
        scores.remove(best)
        scores.insert(0, best)
    return scores


def _chosen(examples: FeatureExamples) -> list[ConceptScore]:
    stored = {concept_key(str(c.get("concept", ""))) for c in examples.top_concepts if c.get("concept")}
    ranked = enriched_concepts(examples, restrict_to=stored) if stored else []
    if not ranked or ranked[0].r < MIN_R:
        ranked = enriched_concepts(examples)
    if not ranked or ranked[0].r < MIN_R:
        return []
    best = ranked[0]
    return [s for s in ranked if s.r >= max(MIN_R, best.r - NEAR_BEST)][:MAX_CONCEPTS]


def _label(concept: str) -> str:
    words = concept.removeprefix("Keyword ").split()
    return " ".join(words[:MAX_LABEL_WORDS])


def explain_baseline(examples: FeatureExamples) -> Explanation:
    chosen = _chosen(examples)
    if not chosen:
        return Explanation(
            sae_id=examples.sae_id, feature=examples.feature, label="No enriched Swiss-Prot concept",
            description=(
                "No Swiss-Prot annotation or keyword of the example proteins tracks the feature's activation "
                f"(no concept with r >= {MIN_R} on at least {MIN_SUPPORT} firing examples)."
            ),
            concepts=[], confidence=0.0,
        )
    best = chosen[0]
    also = [c.concept for c in chosen[1:]]
    description = (
        f"Fires on proteins annotated with {best.concept}: {best.n_firing_with} of {best.n_firing} firing "
        f"examples carry it, against {best.n_silent_with} of {best.n_silent} silent ones "
        f"(r = {best.r:.2f} between presence and activation)."
    )
    if also:
        description += f" Also associated: {', '.join(also)}."
    return Explanation(
        sae_id=examples.sae_id, feature=examples.feature, label=_label(best.concept), description=description,
        concepts=[c.concept for c in chosen], confidence=round(max(0.0, min(1.0, best.r)), 3),
    )


def simulate_baseline(explanation: Explanation, examples: FeatureExamples) -> Simulation:
    """Predict each held-out protein from the explanation's concepts found in its metadata."""
    concept_sets = [protein_concepts(e.protein) for e in examples.examples]
    activations = [max(e.normalized, 0.0) for e in examples.examples]
    levels: dict[str, float] = {}
    for concept in explanation.concepts:
        carrying = [a for a, cs in zip(activations, concept_sets, strict=True) if concept in cs]
        if carrying:
            levels[concept] = sum(carrying) / len(carrying)
    without = [a for a, cs in zip(activations, concept_sets, strict=True) if not any(c in cs for c in levels)]
    floor = sum(without) / len(without) if without else 0.0
    predicted = []
    for protein in examples.heldout:
        have = protein_concepts(protein)
        hits = [level for concept, level in levels.items() if concept in have]
        predicted.append(round(SCALE_MAX * (max(hits) if hits else floor), 3))
    return Simulation(
        sae_id=examples.sae_id, feature=examples.feature,
        accessions=tuple(p.accession for p in examples.heldout), predicted=tuple(predicted),
    )
