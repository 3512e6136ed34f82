"""The explain step: a feature's example proteins -> prompt -> `Explanation`.

Per example the prompt shows the protein's metadata, the annotations overlapping its firing
residues, its activation quantised to 0-10 and a window of the sequence around its strongest
residue with every firing residue in [brackets]. All UniProt text sits inside <data> blocks that
the instructions declare to be data, not instructions.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

import prompts
from agent.llm import LLMBackend, LLMRequest, LLMResult, Message
from agent.metadata import clean, firing_line, informative, metadata_lines, summary_line
from sae.index import ExampleProtein, FeatureExamples

MAX_LABEL_WORDS = 8
MAX_CONCEPTS = 5
WINDOW = 15  # residues either side of the strongest one
PROMPT_NAME = "explain"


class ExplanationOutput(BaseModel):
    """An explanation of one sparse-autoencoder feature of a protein language model."""

    model_config = ConfigDict(extra="ignore")

    label: str = Field(description=f"A short name for the feature, at most {MAX_LABEL_WORDS} words.")
    description: str = Field(description="Two to four sentences on what the feature detects.")
    concepts: list[str] = Field(description="The Swiss-Prot concepts the description relies on, at most 5.")
    confidence: float = Field(ge=0.0, le=1.0, description="How sure you are, from 0 to 1.")

    @field_validator("label")
    @classmethod
    def _short_label(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the label is empty")
        if len(value.split()) > MAX_LABEL_WORDS:
            raise ValueError(f"the label has {len(value.split())} words; at most {MAX_LABEL_WORDS} allowed")
        return value

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the description is empty")
        return value

    @field_validator("concepts")
    @classmethod
    def _concepts(cls, value: list[str]) -> list[str]:
        seen: list[str] = []
        for concept in (" ".join(c.split()) for c in value):
            if concept and concept not in seen:
                seen.append(concept)
        return seen[:MAX_CONCEPTS]


class Explanation(ExplanationOutput):
    """An explanation, tied to its feature."""

    sae_id: str
    feature: int


def feature_ref(sae_id: str, feature: int) -> str:
    return f"#{feature} of SAE {sae_id}"


def quantise(normalized: float) -> int:
    """0-10; a protein where the feature fires at all is never shown as 0 (0 means silent)."""
    level = round(min(max(normalized, 0.0), 1.0) * 10)
    return max(level, 1) if normalized > 0 else 0


def sequence_window(example: ExampleProtein, window: int = WINDOW) -> str | None:
    """`sequence 120-150 (...): AB[C]DE[FG]H` around the strongest residue, firing runs in brackets.

    None for a silent protein.
    """
    firing = [r for r in example.firing if r.value > 0]
    if not firing:
        return None
    sequence = example.protein.sequence
    peak = max(firing, key=lambda r: r.value).position
    start, end = max(1, peak - window), min(len(sequence), peak + window)
    fires = {r.position for r in firing}
    marked = []
    for i in range(start, end + 1):
        opening = i in fires and (i == start or i - 1 not in fires)
        closing = i in fires and (i == end or i + 1 not in fires)
        marked.append(("[" if opening else "") + sequence[i - 1] + ("]" if closing else ""))
    return f"sequence {start}-{end} (fires on {len(fires)} of {len(sequence)} residues): {''.join(marked)}"


def format_example(example: ExampleProtein, rank: int) -> str:
    protein = example.protein
    level = quantise(example.normalized)
    lines = [f"accession: {clean(protein.accession)}", *metadata_lines(protein)]
    firing = [r for r in example.firing if r.value > 0]
    positions = {r.position for r in firing}
    if positions:
        peak = max(firing, key=lambda r: r.value).position
        at_firing = [f for f in informative(protein) if any(f.covers(p) for p in positions)]
        others = [f for f in informative(protein) if f not in at_firing]
        lines.append(f"annotations at firing residues: {firing_line(at_firing, positions, peak) or '(none)'}")
        if others:
            lines.append(f"other annotations: {summary_line(others, limit=6)}")
    else:
        lines.append(f"annotations: {summary_line(informative(protein)) or '(none)'}")
    window = sequence_window(example)
    if window:
        lines.append(window)
    body = "\n".join(lines)
    head = f'<example rank="{rank}" kind="{example.kind}" activation="{level}">'
    return f"{head}\n<data>\n{body}\n</data>\n</example>"


def ordered_examples(examples: FeatureExamples) -> list[ExampleProtein]:
    """Strongest first; silent examples last, by accession (no hidden order among them)."""
    firing = sorted((e for e in examples.examples if e.normalized > 0), key=lambda e: -e.normalized)
    silent = sorted((e for e in examples.examples if e.normalized <= 0), key=lambda e: e.protein.accession)
    return firing + silent


def build_explain_request(examples: FeatureExamples) -> LLMRequest[ExplanationOutput]:
    prompt = prompts.load(PROMPT_NAME)
    ordered = ordered_examples(examples)
    user = prompt.render(
        "user",
        feature_ref=feature_ref(examples.sae_id, examples.feature),
        frac_proteins=f"{examples.frac_proteins:.1%}",
        n_examples=len(ordered),
        examples="\n\n".join(format_example(e, i + 1) for i, e in enumerate(ordered)),
    )
    return LLMRequest(
        system=prompt.render("system"),
        messages=(Message("user", user),),
        output=ExplanationOutput,
        schema_name="explanation",
        max_tokens=1024,
    )


async def explain(examples: FeatureExamples, llm: LLMBackend) -> LLMResult[Explanation]:
    """Ask the LLM to explain one feature. Raises agent.llm.LLMError when no usable answer came."""
    result = await llm.generate(build_explain_request(examples))
    explanation = Explanation(**result.parsed.model_dump(), sae_id=examples.sae_id, feature=examples.feature)
    return LLMResult(explanation, result.usage, result.model, result.repaired)
