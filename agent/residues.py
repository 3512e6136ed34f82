"""The per-residue pass: the simulator predicts a 0-10 activation for every residue of sequence windows.

On a few held-out proteins per feature (the most strongly activated first), the simulator gets a
window of the sequence around the protein's strongest residue and one around a random position
(seeded by the feature and accession, so a rerun asks the same), each with the Swiss-Prot
annotations that overlap it, and the explanation. It never sees an activation: windows are built
from `FeatureExamples.heldout` (proteins) and positions only; `heldout_firing` is read solely to
score the answer.

`residue_pearson` is Pearson's r over all the windows' residues pooled, as OpenAI's
explain-simulate-score pools every token before correlating: a window where the feature is silent
has a constant actual vector and no correlation of its own, yet predicting high there is exactly
the error the score must catch; pooling also weighs every residue alike, instead of letting a
31-residue window count as much as the whole set, and it compares levels across windows (firing
strongly here, weakly there), not only the shape within one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, create_model

import prompts
from agent.explain import Explanation
from agent.llm import LLMRequest, Message
from agent.metadata import annotation_name, clean, position_text
from agent.score import pearson
from agent.simulate import SCALE_MAX, explanation_fields
from sae.index import FeatureExamples
from storage.protein import Protein

PROMPT_NAME = "residues"
WINDOW = 15  # residues either side of the centre
DEFAULT_PROTEINS = 3


class Window(BaseModel):
    """A stretch of one held-out protein's sequence; `actual` is for scoring and never prompted."""

    model_config = ConfigDict(frozen=True)

    key: str  # w1, w2, ... : the answer's keys
    protein: Protein
    start: int  # 1-based, inclusive
    end: int
    actual: tuple[float, ...]  # per residue, normalised by the feature's max

    @property
    def residues(self) -> str:
        return self.protein.sequence[self.start - 1 : self.end]


class ResidueSimulation(BaseModel):
    """Predicted and actual per-residue activations (both 0-1), pooled over the windows."""

    predicted: list[float] = Field(default_factory=list)
    actual: list[float] = Field(default_factory=list)
    n_windows: int = 0

    @property
    def n(self) -> int:
        return len(self.actual)

    @property
    def pearson(self) -> float | None:
        return pearson(self.predicted, self.actual)

    @classmethod
    def from_answer(cls, windows: Sequence[Window], parsed: BaseModel) -> ResidueSimulation:
        answer = parsed.model_dump(by_alias=True)
        predicted: list[float] = []
        actual: list[float] = []
        for window in windows:
            predicted += [float(v) / SCALE_MAX for v in answer[window.key]]
            actual += list(window.actual)
        return cls(predicted=predicted, actual=actual, n_windows=len(windows))


def _window(protein: Protein, centre: int, window: int = WINDOW) -> tuple[int, int]:
    start = max(1, centre - window)
    end = min(len(protein.sequence), start + 2 * window)
    return max(1, end - 2 * window), end


def residue_windows(
    examples: FeatureExamples, *, proteins: int = DEFAULT_PROTEINS, seed: int = 0
) -> list[Window]:
    """The windows the pass asks about (deterministic for a feature, its index and `seed`)."""
    if not examples.heldout or len(examples.heldout_firing) != len(examples.heldout):
        return []
    scale = examples.max_activation if examples.max_activation > 0 else 1.0
    order = sorted(
        range(len(examples.heldout)),
        key=lambda i: (-examples.heldout_actuals[i], examples.heldout[i].accession),
    )
    windows: list[Window] = []
    for i in order[:proteins]:
        protein, firing = examples.heldout[i], examples.heldout_firing[i]
        if not protein.sequence:
            continue
        values = {r.position: min(max(r.value / scale, 0.0), 1.0) for r in firing}
        rng = random.Random(f"{seed}:{examples.feature}:{protein.accession}")
        spans = []
        if values:
            peak = max(values, key=lambda p: (values[p], -p))
            spans.append(_window(protein, peak))
        for _ in range(20):  # a random position whose window does not repeat the peak's
            span = _window(protein, rng.randint(1, len(protein.sequence)))
            if all(span[1] < s[0] or span[0] > s[1] for s in spans):
                spans.append(span)
                break
        for start, end in spans:
            actual = tuple(values.get(p, 0.0) for p in range(start, end + 1))
            windows.append(Window(key="", protein=protein, start=start, end=end, actual=actual))
    # Shown by accession and position, so neither the order of proteins nor which of a protein's two
    # windows comes first says where the feature fires.
    windows.sort(key=lambda w: (w.protein.accession, w.start))
    return [w.model_copy(update={"key": f"w{i + 1}"}) for i, w in enumerate(windows)]


def format_window(window: Window) -> str:
    protein = window.protein
    overlapping = [
        f
        for f in protein.features
        if f.start is not None and f.end is not None and f.start <= window.end and f.end >= window.start
    ]
    annotations = "; ".join(f"{annotation_name(f)} ({position_text(f)})" for f in overlapping[:12])
    lines = [
        f"protein: {clean(protein.accession)} {clean(protein.protein_name, 120)}",
        f"positions: {window.start}-{window.end} ({window.end - window.start + 1} residues)",
        f"annotations overlapping the window: {annotations or '(none)'}",
        f"residues: {' '.join(window.residues)}",
    ]
    body = "\n".join(lines)
    return f'<window key="{window.key}">\n<data>\n{body}\n</data>\n</window>'


def answer_model(windows: Sequence[Window]) -> type[BaseModel]:
    fields = {
        f"f{i}": (
            list[float],
            Field(alias=w.key, description=f"{w.end - w.start + 1} numbers 0-10, one per residue, in order."),
        )
        for i, w in enumerate(windows)
    }
    return create_model(  # type: ignore[call-overload]
        "ResiduePredictions",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        __doc__="Predicted activation (0-10) of the feature on every residue of each window.",
        **fields,
    )


def build_residue_requests(explanation: Explanation, windows: Sequence[Window]) -> LLMRequest[BaseModel]:
    """One request for all windows of a feature; the answer must give each window one number per residue."""
    prompt = prompts.load(PROMPT_NAME)
    lengths = {w.key: w.end - w.start + 1 for w in windows}

    def check(parsed: BaseModel) -> None:
        answer = parsed.model_dump(by_alias=True)
        for key, length in lengths.items():
            values = answer[key]
            if len(values) != length:
                raise ValueError(f"window {key} needs {length} numbers, one per residue; got {len(values)}")
            if any(not 0 <= v <= SCALE_MAX for v in values):
                raise ValueError(f"window {key} has a number outside 0-10")

    user = prompt.render(
        "user",
        **explanation_fields(explanation),
        n_windows=len(windows),
        windows="\n\n".join(format_window(w) for w in windows),
        keys=", ".join(f"{k} ({n})" for k, n in lengths.items()),
    )
    return LLMRequest(
        system=prompt.render("system"),
        messages=(Message("user", user),),
        output=answer_model(windows),
        schema_name="residue_simulation",
        max_tokens=64 + 4 * sum(lengths.values()),
        check=check,
    )
