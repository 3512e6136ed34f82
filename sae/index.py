"""The activation index of one SAE: `index/<sae_id>/`.

(Contract types first; the index builder and loader follow below them.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from storage.protein import Protein


class ResidueActivation(BaseModel):
    """A residue where the feature fires: 1-based position and raw activation."""

    model_config = ConfigDict(frozen=True)

    position: int
    value: float


class ExampleProtein(BaseModel):
    """One protein shown to the explainer, with where and how strongly the feature fires on it."""

    model_config = ConfigDict(frozen=True)

    protein: Protein
    kind: Literal["top", "quantile", "silent"]
    max_activation: float  # raw per-protein max
    normalized: float  # max_activation / the feature's max over the index, in [0, 1]
    firing: tuple[ResidueActivation, ...] = ()  # residues with activation > 0, by position


class FeatureExamples(BaseModel):
    """Everything the agent needs to label one feature.

    `heldout` is what the simulator may see (metadata only); `heldout_actuals` (raw per-protein max)
    and `heldout_normalized` are aligned with it and never go into a prompt.
    """

    model_config = ConfigDict(frozen=True)

    sae_id: str
    feature: int
    max_activation: float
    frac_proteins: float
    examples: tuple[ExampleProtein, ...]
    heldout: tuple[Protein, ...]
    heldout_actuals: tuple[float, ...]
    heldout_normalized: tuple[float, ...]
    top_concepts: tuple[dict, ...] = ()  # from `plmlabel concepts`: {"concept", "f1_test", ...}
