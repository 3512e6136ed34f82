"""Swiss-Prot metadata as prompt text, shared by the explain and simulate prompts (and the baseline).

Everything from a UniProt record is untrusted data: `clean` flattens it to one line and replaces
angle brackets so no record can close the <data> block it sits in or open a tag of its own.

Annotations are grouped by name ("Disulfide bond ×22", "Domain EGF-like ×4"): numbered instances
pool (as in the concept vocabulary of `plmlabel concepts`), so a protein with forty repeats costs one
line, and nothing a reader needs falls off the end of a truncated list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from storage.protein import Protein, ProteinFeature

# Annotations that say nothing a reader could use to recognise a feature from metadata.
UNINFORMATIVE_TYPES = frozenset({
    "Chain", "Helix", "Beta strand", "Turn", "Natural variant", "Alternative sequence", "Mutagenesis",
    "Sequence conflict", "Sequence uncertainty", "Non-adjacent residues", "Non-terminal residue",
    "Initiator methionine",
})
# Keywords nearly every well-studied entry carries: they describe the record, not the protein.
UNINFORMATIVE_KEYWORDS = frozenset({
    "Reference proteome", "3D-structure", "Proteomics identification", "Direct protein sequencing",
    "Alternative splicing", "Polymorphism", "Alternative initiation",
})

FUNCTION_CHARS = 240
MAX_GROUPS = 16  # annotation groups listed per protein
MAX_FIRING_GROUPS = 8
MAX_KEYWORDS = 12
POSITIONS_SHOWN = 3
SEP = " | "  # between annotation groups (descriptions may hold ";" themselves)

_TRAILING_NUMBER = re.compile(r"\s+\d+$")
_CITATIONS = re.compile(r"\s*\(PubMed:\d+(?:,\s*PubMed:\d+)*\)")  # tokens a reader cannot use


def clean(text: str | None, limit: int | None = None) -> str:
    """One line of data text: whitespace collapsed, angle brackets neutralised, optionally truncated."""
    if not text:
        return ""
    flat = " ".join(str(text).split()).replace("<", "‹").replace(">", "›")
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return flat


def informative(protein: Protein) -> list[ProteinFeature]:
    return [f for f in protein.features if f.type not in UNINFORMATIVE_TYPES]


def subtype(feature: ProteinFeature) -> str:
    """The ligand, else the description, up to its first ';' and without an instance number."""
    text = clean(feature.ligand) or clean(feature.description)
    return _TRAILING_NUMBER.sub("", text.split(";")[0].strip()) if text else ""


def annotation_name(feature: ProteinFeature) -> str:
    """'Zinc finger C2H2-type', 'Binding site heme', 'Disulfide bond': the type and its subtype."""
    detail = subtype(feature)
    return clean(f"{feature.type} {detail}" if detail else feature.type, 120)


def position_text(feature: ProteinFeature) -> str:
    if feature.start is None or feature.end is None:
        return "?"
    if feature.type == "Disulfide bond":
        return f"{feature.start}, {feature.end}" if feature.start != feature.end else str(feature.start)
    return str(feature.start) if feature.start == feature.end else f"{feature.start}-{feature.end}"


def group(features: Iterable[ProteinFeature]) -> dict[str, list[ProteinFeature]]:
    """Features by annotation name, in first-seen order."""
    groups: dict[str, list[ProteinFeature]] = {}
    for feature in features:
        groups.setdefault(annotation_name(feature), []).append(feature)
    return groups


def _count(name: str, members: list[ProteinFeature]) -> str:
    return f"{name} ×{len(members)}" if len(members) > 1 else name


def _more(n: int) -> str:
    return f"{SEP}… (+{n} more)" if n > 0 else ""


def summary_line(features: Iterable[ProteinFeature], limit: int = MAX_GROUPS) -> str:
    """'Signal | Disulfide bond ×22 | Domain EGF-like ×4': names and counts, no positions."""
    groups = group(features)
    shown = [_count(name, members) for name, members in list(groups.items())[:limit]]
    return SEP.join(shown) + _more(len(groups) - limit)


def firing_line(features: Iterable[ProteinFeature], firing: set[int], peak: int | None,
                limit: int = MAX_FIRING_GROUPS) -> str:
    """The annotations covering firing residues, tightest first, with positions.

    A group ranks by whether it covers the strongest residue, then by the share of its residues
    that fire (a disulfide's two cysteines both firing beats a 300-residue domain with three).
    """
    def tightness(members: list[ProteinFeature]) -> tuple[bool, float]:
        best = 0.0
        for f in members:
            span = [f.start, f.end] if f.type == "Disulfide bond" else range(f.start or 0, (f.end or 0) + 1)
            covered = [p for p in span if p in firing]
            best = max(best, len(covered) / max(len(span), 1))
        return (peak is not None and any(f.covers(peak) for f in members), best)

    groups = group(f for f in features if any(f.covers(p) for p in firing))
    ranked = sorted(groups.items(), key=lambda item: tightness(item[1]), reverse=True)
    parts = []
    for name, members in ranked[:limit]:
        where = "; ".join(position_text(f) for f in members[:POSITIONS_SHOWN])
        more = ", …" if len(members) > POSITIONS_SHOWN else ""
        parts.append(f"{_count(name, members)} ({where}{more})")
    return SEP.join(parts) + _more(len(groups) - limit)


def metadata_lines(protein: Protein) -> list[str]:
    """Name, organism, length, function and keywords: what any prompt shows of a protein."""
    lines = [
        f"name: {clean(protein.protein_name) or clean(protein.entry_name) or '(none)'}",
        f"organism: {clean(protein.organism) or '(unknown)'}",
        f"length: {protein.length}",
    ]
    if protein.function:
        lines.append(f"function: {clean(_CITATIONS.sub('', protein.function), FUNCTION_CHARS)}")
    keywords = [clean(k) for k in protein.keywords if k not in UNINFORMATIVE_KEYWORDS][:MAX_KEYWORDS]
    if keywords:
        lines.append(f"keywords: {'; '.join(keywords)}")
    return lines
