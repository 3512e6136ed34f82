"""The agent's tools over its `AgentView` (never the test half), run by a `Toolbox` within the limits.

    search_proteins    proteins by concept / keyword / organism / location / free text, and how the
                       feature fires on them against the rest
    concept_f1         precision, recall, F1 of "fires where concept C is annotated", per residue
                       (the counting of sae/concepts.py), over the proteins with residue activations
    protein            one protein's annotations aligned with its firing runs
    try_explanation    simulate an explanation on the validation half: r, each protein's predicted/actual
    commit_label       the final label

Arguments are pydantic models (their JSON schemas are the tool schemas both SDKs get); results are
compact JSON. A bad tool name, bad arguments or a failing tool come back as an error result the
model can read; the Toolbox never raises for them. Every call counts against `max_tool_calls`,
every simulation against `max_simulations`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.agentic.hypothesis import Rule, Term
from agent.agentic.view import AgentView, SeenProtein
from agent.baseline import concept_key
from agent.explain import ExplanationOutput
from agent.llm import Usage
from agent.metadata import annotation_name, clean, informative
from agent.score import pearson
from sae.concept_vocab import ConceptVocabulary
from sae.concepts import THRESHOLDS, ConceptCounter, f1_scores

TOP_SHOWN = 5
SUMMARY_CHARS = 160


class Limits(BaseModel):
    """Per feature: `[agent]` in plmlabel.toml, or the flags."""

    max_tool_calls: int = Field(24, ge=1)
    max_simulations: int = Field(6, ge=1)
    max_turns: int = Field(16, ge=1)


# --- argument models (the tool schemas) -----------------------------------------------------------------
class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchProteins(_Args):
    """Find proteins by what their Swiss-Prot record shows (all given criteria must hold) and see how
    the feature fires on them against all other searchable proteins. Test proteins are never searched."""

    concept: str | None = Field(
        None, description="An annotation, e.g. 'Zinc finger C2H2-type', 'Binding site Zn(2+)'."
    )
    keyword: str | None = Field(None, description="A Swiss-Prot keyword, e.g. 'Kinase'.")
    organism: str | None = Field(
        None, description="Part of the organism name, e.g. 'Homo sapiens' or a genus."
    )
    location: str | None = Field(None, description="A subcellular-location keyword, e.g. 'Nucleus'.")
    text: str | None = Field(None, description="Words in the protein name or function text.")


class ConceptF1(_Args):
    """Precision, recall and F1 of 'the feature fires where this concept is annotated', per residue,
    at several activation thresholds, over the example and validation proteins."""

    concept: str = Field(description="An annotation type or type and subtype, e.g. 'Domain Protein kinase'.")


class ProteinDetail(_Args):
    """One protein's annotations aligned with the feature's firing runs (residue positions, peaks)."""

    accession: str


class TryExplanation(_Args):
    """Simulate an explanation on the validation proteins: Pearson r and each protein's predicted and
    actual activation. Limited number of trials."""

    label: str = Field(description="A short name, at most 8 words.")
    description: str = Field(description="What the feature detects, as a simulator should read it.")
    concepts: list[str] = Field(default_factory=list, description="The Swiss-Prot concepts it relies on.")


class CommitLabel(_Args):
    """Commit the final label. The explanation with the best validation r is stored; say which you mean."""

    label: str
    description: str
    concepts: list[str] = Field(default_factory=list)
    confidence: float = Field(0.5, ge=0.0, le=1.0)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    args: type[BaseModel]

    @property
    def description(self) -> str:
        return " ".join((self.args.__doc__ or self.name).split())

    def schema(self) -> dict[str, Any]:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        schema.pop("description", None)
        return schema


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec("search_proteins", SearchProteins),
    ToolSpec("concept_f1", ConceptF1),
    ToolSpec("protein", ProteinDetail),
    ToolSpec("try_explanation", TryExplanation),
    ToolSpec("commit_label", CommitLabel),
)
COMMIT = "commit_label"


# --- hypotheses and their simulation --------------------------------------------------------------------
@dataclass
class Hypothesis:
    label: str
    description: str
    concepts: list[str]
    confidence: float | None = None
    rule: Rule | None = None  # the baseline agent's predicate (its simulator reads it)
    validation_r: float | None = None
    tried: bool = False

    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.label, self.description, tuple(self.concepts))


Simulator = Callable[[Hypothesis, list[SeenProtein]], Awaitable[tuple[list[float], Usage]]]
"""predictions (0-10, aligned with the proteins) and the tokens spent; it sees metadata only."""


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    content: str  # what goes back to the model (compact JSON)
    summary: str  # one line for the trace


def compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


def _stats(items: list[SeenProtein]) -> dict[str, Any]:
    values = [p.normalized for p in items]
    firing = [v for v in values if v > 0]
    return {
        "n": len(values),
        "n_firing": len(firing),
        "frac_firing": _r(len(firing) / len(values)) if values else None,
        "mean": _r(statistics.fmean(values)) if values else None,
        "median": _r(statistics.median(values)) if values else None,
        "max": _r(max(values)) if values else None,
    }


def _runs(firing: tuple, scale: float) -> list[tuple[int, int, float]]:
    """Consecutive firing residues (a gap of one residue joins): (start, end, peak normalised)."""
    runs: list[list[float]] = []
    for r in sorted(firing, key=lambda r: r.position):
        if runs and r.position <= runs[-1][1] + 2:
            runs[-1][1] = r.position
            runs[-1][2] = max(runs[-1][2], r.value)
        else:
            runs.append([r.position, r.position, r.value])
    return [(int(s), int(e), round(v / scale, 3)) for s, e, v in runs]


class Toolbox:
    """The tools of one feature, their limits and their record (what the trace is built from)."""

    def __init__(self, view: AgentView, simulator: Simulator, limits: Limits) -> None:
        self.view, self.simulator, self.limits = view, simulator, limits
        self.tool_calls = 0
        self.simulations = 0
        self.usage = Usage()
        self.hypotheses: list[Hypothesis] = []
        self.committed: Hypothesis | None = None
        self.steps: list[dict[str, Any]] = []
        self.errors: list[str] = []

    # --- limits ------------------------------------------------------------------------------------
    @property
    def calls_left(self) -> int:
        return self.limits.max_tool_calls - self.tool_calls

    @property
    def simulations_left(self) -> int:
        return self.limits.max_simulations - self.simulations

    # --- dispatch ----------------------------------------------------------------------------------
    async def call(self, name: str, args: Any) -> ToolResult:
        """Run one tool call; a bad name, bad arguments or a failure come back as an error result."""
        self.tool_calls += 1
        shown_args = args if isinstance(args, dict) else {"raw": str(args)[:200]}
        spec = next((t for t in TOOLS if t.name == name), None)
        try:
            if spec is None:
                raise _ToolError(f"unknown tool {name!r}; the tools are {', '.join(t.name for t in TOOLS)}")
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError as exc:
                    raise _ToolError(f"the arguments are not JSON ({exc.msg})") from None
            try:
                parsed = spec.args.model_validate(args)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(arguments)"
                raise _ToolError(f"bad arguments for {name}: {where}: {first['msg']}") from None
            data, summary = await getattr(self, f"_{name}")(parsed)
            result = ToolResult(True, compact(data), summary)
        except _ToolError as exc:
            result = ToolResult(False, compact({"error": str(exc)}), str(exc))
        except Exception as exc:  # noqa: BLE001 - a tool failure is the model's to read, never a crash
            self.usage = self.usage + getattr(exc, "usage", Usage())  # a failed simulator call still cost
            reason = f"{name} failed: {type(exc).__name__}: {exc}"
            result = ToolResult(False, compact({"error": reason}), reason)
        if not result.ok:
            self.errors.append(result.summary)
        self.steps.append(
            {
                "kind": "tool",
                "tool": name,
                "args": _small(shown_args),
                "summary": result.summary[:SUMMARY_CHARS],
                "ok": result.ok,
            }
        )
        return result

    # --- the tools ---------------------------------------------------------------------------------
    async def _search_proteins(self, args: SearchProteins) -> tuple[Any, str]:
        terms = [
            Term(field=f, value=v)
            for f in ("concept", "keyword", "organism", "location", "text")  # type: ignore[arg-type]
            if (v := getattr(args, f))
        ]
        if not terms:
            raise _ToolError("give at least one of concept, keyword, organism, location, text")
        rule = Rule(terms=tuple(terms))
        population = self.view.population()
        hit = [p for p in population if rule.holds(p.protein)]
        rest = [p for p in population if not rule.holds(p.protein)]
        top = sorted(hit, key=lambda p: -p.normalized)[:TOP_SHOWN]
        data = {
            "query": rule.text(),
            "matching": _stats(hit),
            "rest": _stats(rest),
            "top": [[p.accession, clean(p.protein.protein_name, 40), _r(p.normalized, 2)] for p in top],
        }
        m, r = data["matching"], data["rest"]
        return data, (
            f"{rule.text()}: {m['n_firing']}/{m['n']} fire (mean {m['mean']}) vs "
            f"{r['n_firing']}/{r['n']} of the rest (mean {r['mean']})"
        )

    async def _concept_f1(self, args: ConceptF1) -> tuple[Any, str]:
        seen = [p for p in self.view.seen if p.firing is not None]
        vocabulary = ConceptVocabulary.build([p.protein for p in seen], min_proteins=1)
        want = concept_key(args.concept)
        keys = [concept_key(c.name) for c in vocabulary.concepts]
        chosen = [i for i, k in enumerate(keys) if k == want] or [
            i for i, k in enumerate(keys) if k.startswith(want + " ")
        ][:3]
        if not chosen:
            raise _ToolError(f"no example or validation protein carries a concept named {args.concept!r}")
        counter = ConceptCounter(len(vocabulary), 1, THRESHOLDS)
        scale = self.view.max_activation or 1.0
        for p in seen:
            concepts = vocabulary.annotate(p.protein)
            acts = np.zeros((concepts.length, 1), dtype=np.float32)
            for r in p.firing or ():
                if 1 <= r.position <= concepts.length:
                    acts[r.position - 1, 0] = r.value / scale
            counter.add(acts, concepts, 0)
        counts = counter.result()
        precision, recall, f1 = f1_scores(counts, vocabulary.kinds)
        rows = []
        for c in chosen:
            t = int(f1[0, c, 0].argmax())
            rows.append(
                {
                    "concept": vocabulary.concepts[c].name,
                    "proteins": int(counts.proteins[0, c]),
                    "best_threshold": THRESHOLDS[t],
                    "precision": _r(precision[0, c, 0, t]),
                    "recall": _r(recall[0, c, 0, t]),
                    "f1": _r(f1[0, c, 0, t]),
                    "f1_by_threshold": [_r(v, 2) for v in f1[0, c, 0].tolist()],
                }
            )
        best = rows[0]
        return (
            {"thresholds": list(THRESHOLDS), "concepts": rows},
            f"{best['concept']}: F1 {best['f1']} (P {best['precision']}, R {best['recall']}) "
            f"at {best['best_threshold']}",
        )

    async def _protein(self, args: ProteinDetail) -> tuple[Any, str]:
        item = self.view.find(args.accession)
        if item is None:
            raise _ToolError(f"{args.accession!r} is not among the proteins you may inspect")
        protein = item.protein
        data: dict[str, Any] = {
            "accession": protein.accession,
            "name": clean(protein.protein_name, 80),
            "organism": clean(protein.organism, 60),
            "length": protein.length,
            "activation": _r(item.normalized, 2),
            "role": item.role,
        }
        if item.firing is None:
            data["note"] = "only the per-protein max is stored for this protein"
            data["annotations"] = sorted({annotation_name(f) for f in informative(protein)})[:12]
            return data, f"{protein.accession}: max {data['activation']} (no residue activations)"
        runs = []
        for start, end, peak in _runs(item.firing, self.view.max_activation or 1.0)[:8]:
            covering = sorted(
                {
                    annotation_name(f)
                    for f in informative(protein)
                    if any(f.covers(p) for p in range(start, end + 1))
                }
            )
            runs.append(
                {
                    "residues": f"{start}-{end}",
                    "peak": peak,
                    "sequence": protein.sequence[start - 1 : end][:30],
                    "annotations": covering[:6],
                }
            )
        data["firing_runs"] = runs
        data["other_annotations"] = sorted(
            {annotation_name(f) for f in informative(protein)} - {a for r in runs for a in r["annotations"]}
        )[:10]
        return data, f"{protein.accession}: {len(runs)} firing runs, max {data['activation']}"

    async def _try_explanation(self, args: TryExplanation) -> tuple[Any, str]:
        ExplanationOutput(
            label=args.label, description=args.description, concepts=args.concepts, confidence=0.5
        )
        return await self.try_hypothesis(Hypothesis(args.label, args.description, list(args.concepts)))

    async def try_hypothesis(self, hypothesis: Hypothesis) -> tuple[Any, str]:
        """Simulate on the validation half (counts a simulation); raises _ToolError past the limit."""
        if self.simulations_left <= 0:
            raise _ToolError(f"no simulations left (limit {self.limits.max_simulations}); commit a label")
        proteins = list(self.view.validation)
        if not proteins:
            raise _ToolError("this feature has no validation proteins")
        self.simulations += 1
        predicted, usage = await self.simulator(hypothesis, proteins)
        self.usage = self.usage + usage
        actual = [p.normalized for p in proteins]
        hypothesis.validation_r = pearson(predicted, actual)
        hypothesis.tried = True
        self.hypotheses.append(hypothesis)
        self.steps.append(
            {
                "kind": "hypothesis",
                "label": hypothesis.label,
                "description": hypothesis.description[:400],
                "validation_r": _r(hypothesis.validation_r),
            }
        )
        order = sorted(range(len(proteins)), key=lambda i: proteins[i].accession)
        data = {
            "validation_r": _r(hypothesis.validation_r),
            "n": len(proteins),
            "proteins": [[proteins[i].accession, round(predicted[i], 1), _r(actual[i], 2)] for i in order],
        }
        return data, f"{hypothesis.label!r}: validation r {_r(hypothesis.validation_r)}"

    async def call_trial(self, hypothesis: Hypothesis) -> ToolResult:
        """`try_explanation` of a hypothesis built in code (the baseline agent's rules): one tool call."""
        self.tool_calls += 1
        try:
            data, summary = await self.try_hypothesis(hypothesis)
            result = ToolResult(True, compact(data), summary)
        except _ToolError as exc:
            result = ToolResult(False, compact({"error": str(exc)}), str(exc))
        self.steps.append(
            {
                "kind": "tool",
                "tool": "try_explanation",
                "args": _small({"label": hypothesis.label, "concepts": hypothesis.concepts}),
                "summary": result.summary[:SUMMARY_CHARS],
                "ok": result.ok,
            }
        )
        return result

    async def _commit_label(self, args: CommitLabel) -> tuple[Any, str]:
        try:
            checked = ExplanationOutput(
                label=args.label,
                description=args.description,
                concepts=args.concepts,
                confidence=args.confidence,
            )
        except ValidationError as exc:
            raise _ToolError(f"bad label: {exc.errors()[0]['msg']}") from None
        self.committed = Hypothesis(checked.label, checked.description, checked.concepts, checked.confidence)
        for tried in self.hypotheses:
            if tried.key() == self.committed.key():
                self.committed.validation_r, self.committed.tried = tried.validation_r, True
        return {"committed": checked.label}, f"committed {checked.label!r}"

    # --- the end -----------------------------------------------------------------------------------
    def best(self) -> Hypothesis | None:
        """The tried hypothesis with the best validation r (the first of equals), None if none was scored."""
        scored = [h for h in self.hypotheses if h.validation_r is not None]
        return max(scored, key=lambda h: h.validation_r or 0.0) if scored else None


class _ToolError(Exception):
    """A tool cannot answer: the message goes back to the model."""


def _small(args: dict[str, Any]) -> dict[str, Any]:
    """Arguments for the trace: strings cut to 200 characters, lists to 8 items."""
    out: dict[str, Any] = {}
    for key, value in list(args.items())[:8]:
        if isinstance(value, str):
            value = value[:200]
        elif isinstance(value, list):
            value = [v[:100] if isinstance(v, str) else v for v in value[:8]]
        elif not isinstance(value, int | float | bool | type(None)):
            value = str(value)[:200]
        out[str(key)[:40]] = value
    return out
