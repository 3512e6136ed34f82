"""The labeling protocol, written once: a feature's stages, each a request builder and a result parser.

    work = FeatureWork(examples)
    stop = await advance(work, labeler, start=0, send=...)   # run stages until one is deferred
    outcome = finish(work, labeler, threshold=..., min_heldout=...)   # score -> Outcome

A stage is one of two kinds:

- `RequestStage`: `request(work)` builds the LLM request from the examples and what earlier stages
  left in `work` (None: nothing to ask, e.g. no held-out proteins); `accept(work, parsed)` turns the
  parsed answer into the typed result it keeps in `work`. How the request travels is the
  transport's business: the synchronous transport (`agent.labeling.sync`) sends it with
  `llm.generate` at once; the batch transport (`agent.labeling.batch`) puts it in a provider batch
  and resumes the feature when the answer is collected, perhaps in another process.
- `CallStage`: `run(work, llm)` does its work itself and returns the tokens it spent: the offline
  baseline, or a stage that converses with tools (the agent loop). Both transports run it in-line
  (at full price in a batch run), so a new such stage touches no transport.

Everything a feature needs between stages lives in `FeatureWork`, and `FeatureWork.carried()` /
`FeatureWork.resume()` round-trip it through JSON (the `batches` table), so a batch answer collected
after a restart continues exactly where the submitting run stopped. Extra results a stage produces
(an agent's trace, its one-shot test score) go in `work.trace` / `work.test_pearson` and reach the
label row through the writer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from agent.explain import Explanation, ExplanationOutput, build_explain_request
from agent.llm import LLMBackend, LLMRequest, Usage
from agent.residues import ResidueSimulation, build_residue_requests, residue_windows
from agent.score import Score, score
from agent.simulate import Simulation, build_simulate_request, heldout_order
from sae.index import FeatureExamples
from storage.labels import PredictionRow


def add_cost(a: float | None, b: float | None) -> float | None:
    """Costs add up; one unknown (unpriced) part makes the total unknown."""
    return None if a is None or b is None else a + b


@dataclass
class FeatureWork:
    """One feature on its way through the stages."""

    examples: FeatureExamples
    explanation: Explanation | None = None
    simulation: Simulation | None = None
    residues: ResidueSimulation | None = None
    trace: Any = None  # JSON-able record of a stage that investigates (the agent loop)
    test_pearson: float | None = None  # a one-shot score on the test half, kept beside the final one
    usage: Usage = field(default_factory=Usage)
    cost: float | None = 0.0
    pending: dict[str, Any] = field(default_factory=dict)  # a stage's own state between request/accept

    @property
    def feature(self) -> int:
        return self.examples.feature

    def spend(self, usage: Usage, cost: float | None) -> None:
        self.usage = self.usage + usage
        self.cost = add_cost(self.cost, cost)

    def carried(self) -> dict[str, Any]:
        """What a later process needs to resume this feature (JSON-able)."""
        return {
            "explanation": (
                ExplanationOutput.model_validate(self.explanation.model_dump()).model_dump()
                if self.explanation
                else None
            ),
            "simulation": list(self.simulation.predicted) if self.simulation else None,
            "residues": self.residues.model_dump() if self.residues else None,
            "trace": self.trace,
            "test_pearson": self.test_pearson,
            "usage": asdict(self.usage),
            "cost": self.cost,
            "pending": self.pending,
            "index_hash": self.examples.index_hash,
            "heldout": [p.accession for p in heldout_order(self.examples.heldout)],
        }

    @classmethod
    def resume(cls, examples: FeatureExamples, carried: dict[str, Any]) -> FeatureWork:
        """Rebuild a feature's work from `carried()`; ValueError when the index changed since."""
        rebuilt = carried.get("index_hash") != examples.index_hash
        if "heldout" in carried:  # lines from before the protocol was one lack it for explain
            rebuilt |= carried["heldout"] != [p.accession for p in heldout_order(examples.heldout)]
        if rebuilt:
            raise ValueError("the index was rebuilt after the batch was submitted; the answer is not scored")
        work = cls(
            examples,
            usage=Usage(**carried.get("usage", {})),
            cost=carried.get("cost", 0.0),
            trace=carried.get("trace"),
            test_pearson=carried.get("test_pearson"),
            pending=dict(carried.get("pending") or {}),
        )
        if carried.get("explanation"):
            work.explanation = Explanation(
                **carried["explanation"], sae_id=examples.sae_id, feature=examples.feature
            )
        if carried.get("simulation") is not None:
            work.simulation = Simulation(
                sae_id=examples.sae_id,
                feature=examples.feature,
                accessions=tuple(p.accession for p in examples.heldout),
                predicted=tuple(carried["simulation"]),
            )
        if carried.get("residues"):
            work.residues = ResidueSimulation.model_validate(carried["residues"])
        return work


# --- stages --------------------------------------------------------------------------------------------
class RequestStage(ABC):
    """A stage that is one LLM request: build it, then turn the parsed answer into a typed result."""

    name: str
    prompt: str | None = None  # the prompt file it renders (its version is stored with the label)

    @abstractmethod
    def request(self, work: FeatureWork) -> LLMRequest[Any] | None:
        """The request, from the examples and what earlier stages left; None: nothing to ask."""

    @abstractmethod
    def accept(self, work: FeatureWork, parsed: BaseModel) -> None:
        """Keep the parsed answer in `work` as this stage's typed result."""

    def estimate_request(self, examples: FeatureExamples) -> LLMRequest[Any] | None:
        """A request of typical size before earlier stages ran (for cost estimates and dry runs)."""
        return self.request(placeholder_work(examples))

    def expected_output_tokens(self, request: LLMRequest[Any]) -> int:
        return request.max_tokens // 3


class CallStage(ABC):
    """A stage that does its own work (offline, or a conversation with tools); both transports run it."""

    name: str
    prompt: str | None = None

    @abstractmethod
    async def run(self, work: FeatureWork, llm: LLMBackend | None) -> Usage:
        """Do the stage; return the tokens spent (LLMError, carrying its usage, when it fails)."""


Stage = RequestStage | CallStage


class ExplainStage(RequestStage):
    name = "explain"
    prompt = "explain"

    def request(self, work: FeatureWork) -> LLMRequest[Any]:
        return build_explain_request(work.examples)

    def accept(self, work: FeatureWork, parsed: BaseModel) -> None:
        work.explanation = Explanation(
            **parsed.model_dump(), sae_id=work.examples.sae_id, feature=work.feature
        )

    def expected_output_tokens(self, request: LLMRequest[Any]) -> int:
        return 350


class SimulateStage(RequestStage):
    """Predicted 0-10 per held-out protein; with no held-out proteins the feature is scored as it stands."""

    name = "simulate"
    prompt = "simulate"

    def request(self, work: FeatureWork) -> LLMRequest[Any] | None:
        assert work.explanation is not None
        if not work.examples.heldout:
            work.simulation = Simulation(
                sae_id=work.examples.sae_id, feature=work.feature, accessions=(), predicted=()
            )
            return None
        return build_simulate_request(work.explanation, work.examples.heldout)

    def accept(self, work: FeatureWork, parsed: BaseModel) -> None:
        by_accession = parsed.model_dump(by_alias=True)
        accessions = tuple(p.accession for p in work.examples.heldout)
        work.simulation = Simulation(
            sae_id=work.examples.sae_id,
            feature=work.feature,
            accessions=accessions,
            predicted=tuple(float(by_accession[a]) for a in accessions),
        )

    def expected_output_tokens(self, request: LLMRequest[Any]) -> int:
        return 20 + 10 * len(request.output.model_fields)


class ResidueStage(RequestStage):
    """The optional per-residue pass (agent/residues.py): all windows of a feature in one request."""

    name = "residues"
    prompt = "residues"

    def __init__(self, proteins: int = 3, seed: int = 0) -> None:
        self.proteins = proteins
        self.seed = seed

    def request(self, work: FeatureWork) -> LLMRequest[Any] | None:
        assert work.explanation is not None
        windows = residue_windows(work.examples, proteins=self.proteins, seed=self.seed)
        if not windows:
            return None
        return build_residue_requests(work.explanation, windows)

    def accept(self, work: FeatureWork, parsed: BaseModel) -> None:
        windows = residue_windows(work.examples, proteins=self.proteins, seed=self.seed)
        work.residues = ResidueSimulation.from_answer(windows, parsed)

    def expected_output_tokens(self, request: LLMRequest[Any]) -> int:
        return request.max_tokens // 2


def placeholder_work(examples: FeatureExamples, words: int = 120) -> FeatureWork:
    """A feature's work with a stand-in explanation of typical size, for estimates before it exists."""
    explanation = Explanation(
        sae_id=examples.sae_id,
        feature=examples.feature,
        label="(the explanation from the explain step)",
        description=" ".join(["word"] * words),
        concepts=["concept"] * 3,
        confidence=0.5,
    )
    return FeatureWork(examples, explanation=explanation)


# --- running stages ------------------------------------------------------------------------------------
class Answer(BaseModel):
    """A parsed answer to one request and what it cost."""

    model_config = {"arbitrary_types_allowed": True}

    parsed: Any
    usage: Any
    cost: float | None


Send = Callable[[RequestStage, LLMRequest[Any], FeatureWork], Awaitable[Answer | None]]


class StageRunner(Protocol):
    """What `advance` needs of a labeler."""

    llm: LLMBackend | None
    stages: Sequence[Stage]

    def cost(self, usage: Usage, *, batch: bool = False) -> float | None: ...


async def advance(work: FeatureWork, labeler: StageRunner, send: Send, start: int = 0) -> int | None:
    """Run the stages from `start`. Returns the index of the stage whose request `send` deferred
    (answered later, by a batch), or None once every stage is done. LLMError propagates."""
    for index in range(start, len(labeler.stages)):
        stage = labeler.stages[index]
        if isinstance(stage, CallStage):
            usage = await stage.run(work, labeler.llm)
            work.spend(usage, labeler.cost(usage))
            continue
        request = stage.request(work)
        if request is None:
            continue
        answer = await send(stage, request, work)
        if answer is None:
            return index
        work.spend(answer.usage, answer.cost)
        stage.accept(work, answer.parsed)
    return None


@dataclass
class Outcome:
    """A feature's end: its label and scores, or why it failed. The writer stores it."""

    feature: int
    explanation: Explanation | None = None
    predictions: list[PredictionRow] = field(default_factory=list)
    score: Score | None = None
    residue_pearson: float | None = None
    n_residues: int | None = None
    trace: Any = None
    test_pearson: float | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    error: str | None = None
    fatal: bool = False
    prompt_versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def finish(
    work: FeatureWork, *, threshold: float, min_heldout: int, prompt_versions: dict[str, str | None]
) -> Outcome:
    """Score a feature whose stages are done."""
    examples, simulation = work.examples, work.simulation
    assert work.explanation is not None and simulation is not None
    predictions = [
        PredictionRow(accession=a, predicted=p, actual=n, actual_raw=r)
        for a, p, n, r in zip(
            simulation.accessions,
            simulation.predicted,
            examples.heldout_normalized,
            examples.heldout_actuals,
            strict=True,
        )
    ]
    result = score(
        simulation.predicted, examples.heldout_normalized, threshold=threshold, min_heldout=min_heldout
    )
    residues = work.residues
    test_pearson = work.test_pearson
    if test_pearson is None and work.pending.get("agent_oneshot_final"):  # the agent kept the one-shot label
        test_pearson = result.pearson
    return Outcome(
        feature=work.feature,
        explanation=work.explanation,
        predictions=predictions,
        score=result,
        residue_pearson=residues.pearson if residues else None,
        n_residues=residues.n if residues else None,
        trace=work.trace,
        test_pearson=test_pearson,
        usage=work.usage,
        cost_usd=work.cost,
        prompt_versions=prompt_versions,
    )


def failed(
    feature: int,
    error: str,
    *,
    usage: Usage | None = None,
    cost: float | None = 0.0,
    fatal: bool = False,
    prompt_versions: dict[str, str | None] | None = None,
) -> Outcome:
    return Outcome(
        feature=feature,
        error=error,
        fatal=fatal,
        usage=usage or Usage(),
        cost_usd=cost,
        prompt_versions=prompt_versions or {},
    )
