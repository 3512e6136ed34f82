"""The `suggestions` table: proteins an SAE feature says carry a concept that Swiss-Prot does not list.

A suggestion is a claim about a protein, never a change to it: the `proteins` and `features` tables
are not touched here. `plmlabel suggest` replaces all suggestions of one SAE at a time, so a stale
suggestion never outlives the evaluation it came from. Writers for TSV (spreadsheet-safe cells) and
GFF3 (sequence viewers) live here too, beside the rows they write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from storage.db import Database, to_json, utcnow


class Evidence(BaseModel):
    """Why the feature is trusted for the concept."""

    model_config = ConfigDict(frozen=True)

    precision: float | None = None  # the feature's test-split precision for the concept
    recall: float | None = None
    f1: float | None = None
    threshold: float | None = None  # normalised activation the concept association fires above
    min_activation: float | None = None  # normalised per-protein max a suggestion needs
    label: str | None = None  # a validated label whose concepts name the concept
    label_score: float | None = None  # its Pearson r on the test half
    n_carriers: int = 0  # indexed proteins annotated with the concept where the feature fires


class Suggestion(BaseModel):
    """One protein that, by one feature, should carry a concept it is not annotated with."""

    model_config = ConfigDict(frozen=True)

    sae_id: str
    feature: int
    accession: str
    concept: str
    kind: str  # "region" or "residue"
    residues: tuple[tuple[int, int], ...] = ()  # 1-based inclusive ranges where the feature fires
    activation: float  # raw per-protein max
    normalized: float  # activation / the feature's max
    evidence: Evidence
    rank_score: float
    created_at: str = Field(default_factory=utcnow)

    def as_json(self) -> dict[str, Any]:
        """The `--json` object: the issue's names first."""
        return {
            "feature": self.feature, "accession": self.accession, "concept": self.concept,
            "residues": [list(r) for r in self.residues], "activation": self.activation,
            "normalized": self.normalized, "evidence": self.evidence.model_dump(),
            "rank_score": self.rank_score, "kind": self.kind, "sae_id": self.sae_id,
        }


def write_suggestions(db: Database, sae_id: str, suggestions: Sequence[Suggestion], *,
                      features: Sequence[int] | None = None) -> int:
    """Replace the suggestions of `sae_id` (of `features` only, when given); returns the rows written."""
    rows = [
        {
            "sae_id": s.sae_id, "feature": s.feature, "accession": s.accession, "concept": s.concept,
            "kind": s.kind, "residues": to_json([list(r) for r in s.residues]), "activation": s.activation,
            "normalized": s.normalized, "evidence": to_json(s.evidence.model_dump()),
            "rank_score": s.rank_score, "created_at": s.created_at,
        }
        for s in suggestions if s.sae_id == sae_id
    ]
    if len(rows) != len(suggestions) or (features is not None
                                         and any(s.feature not in set(features) for s in suggestions)):
        raise ValueError(f"every suggestion written for {sae_id!r} must belong to it (and its features)")
    with db.transaction():
        if features is None:
            db.execute("delete from suggestions where sae_id = ?", (sae_id,))
        else:
            for feature in sorted(set(features)):
                db.execute("delete from suggestions where sae_id = ? and feature = ?", (sae_id, int(feature)))
        if rows:
            db.table("suggestions").insert_all(rows, batch_size=1000)
    return len(rows)


def _from_row(row: dict[str, Any]) -> Suggestion:
    return Suggestion(
        sae_id=row["sae_id"], feature=row["feature"], accession=row["accession"], concept=row["concept"],
        kind=row["kind"], residues=tuple(tuple(r) for r in json.loads(row["residues"] or "[]")),
        activation=row["activation"], normalized=row["normalized"],
        evidence=Evidence.model_validate(json.loads(row["evidence"] or "{}")), rank_score=row["rank_score"],
        created_at=row["created_at"],
    )


def list_suggestions(db: Database, sae_id: str, feature: int | None = None, *,
                     accession: str | None = None, limit: int | None = None) -> list[Suggestion]:
    """Stored suggestions of one SAE (optionally one feature or protein), best rank score first."""
    sql, params = "select * from suggestions where sae_id = ?", [sae_id]
    if feature is not None:
        sql += " and feature = ?"
        params.append(int(feature))
    if accession is not None:
        sql += " and accession = ?"
        params.append(accession)
    sql += " order by rank_score desc, feature, accession, concept"
    if limit is not None:
        sql += " limit ?"
        params.append(int(limit))
    return [_from_row(r) for r in db.query(sql, tuple(params))]


# --- files ------------------------------------------------------------------------------------------

TSV_COLUMNS = ("feature", "accession", "concept", "kind", "residues", "activation", "normalized",
               "precision", "recall", "f1", "label", "label_score", "rank_score")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def strip_control(text: str) -> str:
    """Text without control characters (ESC, BEL, ...; tab, newline and CR become spaces)."""
    return _CONTROL.sub("", str(text).replace("\t", " ").replace("\r", " ").replace("\n", " "))


def safe_cell(value: Any) -> str:
    """A TSV cell a spreadsheet will not run: text starting = + - @ tab or CR gets a leading quote.

    Numbers (including negative ones) stay as they are; tabs and newlines inside a cell become
    spaces, so a cell never breaks the row.
    """
    if value is None:
        return ""
    text = str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return text
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _NUMBER.match(text):
        text = "'" + text
    return strip_control(text)


def _ranges(residues: Iterable[tuple[int, int]]) -> str:
    return ",".join(f"{s}-{e}" if s != e else str(s) for s, e in residues)


def suggestions_tsv(suggestions: Sequence[Suggestion]) -> str:
    lines = ["\t".join(TSV_COLUMNS)]
    for s in suggestions:
        ev = s.evidence
        cells = (s.feature, s.accession, s.concept, s.kind, _ranges(s.residues), s.activation, s.normalized,
                 ev.precision, ev.recall, ev.f1, ev.label, ev.label_score, s.rank_score)
        lines.append("\t".join(safe_cell(c) for c in cells))
    return "\n".join(lines) + "\n"


def _gff_escape(text: str) -> str:
    """GFF3 column-9 value: percent-encode what the spec reserves (; = & , tab, newline, %, controls)."""
    return quote(_CONTROL.sub("", text), safe=" ()[]:/.'_+-*#!?~^{}|<>\"")


def _gff_seqid(text: str) -> str:
    return quote(text, safe=".:^*$@!+?|")


def suggestions_gff3(suggestions: Sequence[Suggestion], lengths: dict[str, int]) -> str:
    """GFF3 (one line per suggested range; protein coordinates) for sequence viewers such as JBrowse."""
    lines = ["##gff-version 3"]
    for accession in sorted({s.accession for s in suggestions}):
        if accession in lengths:
            lines.append(f"##sequence-region {_gff_seqid(accession)} 1 {lengths[accession]}")
    for n, s in enumerate(suggestions, start=1):
        ranges = s.residues or ((1, lengths.get(s.accession, 1)),)
        for start, end in ranges:
            attrs = {  # one ID over a suggestion's ranges: GFF3's discontinuous feature
                "ID": f"suggestion{n}", "Name": s.concept,
                "Note": f"suggested by SAE {s.sae_id} feature {s.feature}",
                "sae_id": s.sae_id, "feature": str(s.feature), "concept": s.concept,
                "f1": "" if s.evidence.f1 is None else f"{s.evidence.f1:g}",
                "label": s.evidence.label or "", "rank_score": f"{s.rank_score:.4f}",
            }
            column9 = ";".join(f"{k}={_gff_escape(v)}" for k, v in attrs.items() if v != "")
            lines.append("\t".join((_gff_seqid(s.accession), "plmlabel", "sequence_feature", str(start),
                                    str(end), f"{s.normalized:.4f}", ".", ".", column9)))
    return "\n".join(lines) + "\n"
