"""The Protein domain type and the normalised feature-type vocabulary shared by every UniProt format.

Parsers live in storage/swissprot.py; this module holds only the types so that every layer can import
them cheaply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Position modifiers: None = exact; "<" / ">" = the true end lies beyond; "?" = unknown position.
PositionModifier = Literal["<", ">", "?"] | None

# One vocabulary across formats: the names UniProt's REST API (JSON `type`, TSV column headers) uses.
# Flat-file keys (current and pre-2019) and XML feature types map onto these in storage/swissprot.py.
FEATURE_TYPES: tuple[str, ...] = (
    "Active site", "Binding site", "Site", "Zinc finger", "DNA binding", "Disulfide bond",
    "Cross-link", "Modified residue", "Glycosylation", "Lipidation", "Domain", "Repeat", "Region",
    "Motif", "Compositional bias", "Coiled coil", "Transmembrane", "Intramembrane",
    "Topological domain", "Signal", "Transit peptide", "Propeptide", "Peptide", "Chain",
    "Initiator methionine", "Non-standard residue", "Helix", "Beta strand", "Turn",
    "Natural variant", "Alternative sequence", "Mutagenesis", "Sequence conflict",
    "Sequence uncertainty", "Non-adjacent residues", "Non-terminal residue",
)


class ProteinFeature(BaseModel):
    """One sequence annotation. Positions are 1-based and inclusive.

    A disulfide bond is one feature whose start and end are its two cysteines. A position with a
    modifier is kept (clamped into the sequence where it is "<"/">") and flagged, never guessed.
    """

    model_config = ConfigDict(frozen=True)

    type: str
    start: int | None
    end: int | None
    start_modifier: PositionModifier = None
    end_modifier: PositionModifier = None
    description: str | None = None
    ligand: str | None = None
    evidence: tuple[str, ...] = ()

    def covers(self, position: int) -> bool:
        """Whether the 1-based residue `position` lies in this feature (both residues for a disulfide)."""
        if self.start is None or self.end is None:
            return False
        if self.type == "Disulfide bond":
            return position in (self.start, self.end)
        return self.start <= position <= self.end


class Protein(BaseModel):
    """One UniProtKB entry, as much of it as plmlabel uses."""

    model_config = ConfigDict(frozen=True)

    accession: str
    entry_name: str | None = None
    protein_name: str | None = None
    organism: str | None = None
    taxon_id: int | None = None
    length: int
    sequence: str
    function: str | None = None
    keywords: tuple[str, ...] = ()
    features: tuple[ProteinFeature, ...] = Field(default_factory=tuple)

    def features_at(self, positions: list[int] | set[int]) -> list[ProteinFeature]:
        """The features that cover any of the given 1-based residues, in file order."""
        wanted = set(positions)
        return [f for f in self.features if any(f.covers(p) for p in wanted)]
