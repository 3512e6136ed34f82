"""The simulate step: an explanation + held-out proteins' metadata -> one predicted 0-10 per protein.

The simulator never sees activations: the prompt is built from `FeatureExamples.heldout` (proteins
only), never from `heldout_actuals`/`heldout_normalized`, and lists the proteins by accession so
their order cannot hint at their activations. All held-out proteins go in one call; the answer is
an object keyed by accession, and a missing or extra accession is a schema failure (one repair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, create_model

import prompts
from agent.explain import Explanation, feature_ref
from agent.llm import LLMBackend, LLMRequest, LLMResult, Message, Usage
from agent.metadata import clean, informative, metadata_lines, summary_line
from sae.index import FeatureExamples
from storage.protein import Protein


def explanation_fields(explanation: Explanation) -> dict[str, str]:
    """The explanation as every simulator prompt shows it (the explainer's text is untrusted: cleaned)."""
    return {
        "feature_ref": feature_ref(explanation.sae_id, explanation.feature),
        "label": clean(explanation.label),
        "description": clean(explanation.description),
        "concepts": "; ".join(clean(c) for c in explanation.concepts) or "(none given)",
    }


PROMPT_NAME = "simulate"
SCALE_MAX = 10.0


class Simulation(BaseModel):
    """Predicted activations (0-10) of one feature, aligned with `accessions`."""

    model_config = ConfigDict(frozen=True)

    sae_id: str
    feature: int
    accessions: tuple[str, ...]
    predicted: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.accessions, self.predicted, strict=True))


def prediction_model(accessions: Sequence[str]) -> type[BaseModel]:
    """An output model with exactly one required 0-10 number per accession, and nothing else."""
    fields = {
        f"p{i}": (float, Field(ge=0.0, le=SCALE_MAX, alias=acc, description=f"Activation of {acc}, 0-10."))
        for i, acc in enumerate(accessions)
    }
    return create_model(  # type: ignore[call-overload]
        "Predictions",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        __doc__="Predicted activation (0-10) of the feature on each listed protein, keyed by accession.",
        **fields,
    )


def format_protein(protein: Protein) -> str:
    lines = metadata_lines(protein)
    lines.append(f"annotations: {summary_line(informative(protein)) or '(none)'}")
    body = "\n".join(lines)
    return f'<protein accession="{clean(protein.accession)}">\n<data>\n{body}\n</data>\n</protein>'


def heldout_order(proteins: Sequence[Protein]) -> list[Protein]:
    """Unique proteins sorted by accession: an order that carries no information about activations."""
    unique = {p.accession: p for p in proteins}
    return [unique[a] for a in sorted(unique)]


def build_simulate_request(explanation: Explanation, heldout: Sequence[Protein]) -> LLMRequest[BaseModel]:
    prompt = prompts.load(PROMPT_NAME)
    proteins = heldout_order(heldout)
    accessions = [p.accession for p in proteins]
    user = prompt.render(
        "user",
        **explanation_fields(explanation),
        n_proteins=len(proteins),
        proteins="\n\n".join(format_protein(p) for p in proteins),
        accessions=", ".join(accessions),
    )
    return LLMRequest(
        system=prompt.render("system"),
        messages=(Message("user", user),),
        output=prediction_model(accessions),
        schema_name="simulation",
        max_tokens=64 + 16 * len(accessions),
    )


def build_trial_request(explanation: Explanation, proteins: Sequence[Protein]) -> LLMRequest[BaseModel]:
    """The simulate request with the proteins moved into the system block, for the agent's repeated trials
    on the same (validation) proteins: instructions and proteins are then one cached prefix, and each
    trial after the first pays for little more than its explanation. Same prompt, same information."""
    request = build_simulate_request(explanation, proteins)
    prompt = prompts.load(PROMPT_NAME)
    ordered = heldout_order(proteins)
    accessions = [p.accession for p in ordered]
    system = (prompt.render("system") + "\n\nThe proteins of every explanation you will be asked about:\n\n"
              + "\n\n".join(format_protein(p) for p in ordered))
    user = prompt.render("user", **explanation_fields(explanation), n_proteins=len(ordered),
                         proteins="(the proteins listed in the instructions)",
                         accessions=", ".join(accessions))
    return replace(request, system=system, messages=(Message("user", user),))


async def simulate(
    explanation: Explanation, examples: FeatureExamples, llm: LLMBackend
) -> LLMResult[Simulation]:
    """Predict the feature's activation on every held-out protein, in the order of `examples.heldout`."""
    accessions = tuple(p.accession for p in examples.heldout)
    if not accessions:
        empty = Simulation(sae_id=explanation.sae_id, feature=explanation.feature, accessions=(),
                           predicted=())
        return LLMResult(empty, Usage(), llm.model)
    result = await llm.generate(build_simulate_request(explanation, examples.heldout))
    by_accession = result.parsed.model_dump(by_alias=True)
    simulation = Simulation(
        sae_id=explanation.sae_id,
        feature=explanation.feature,
        accessions=accessions,
        predicted=tuple(float(by_accession[a]) for a in accessions),
    )
    return LLMResult(simulation, result.usage, result.model, result.repaired)
