"""UniProt REST TSV exports (`format=tsv`), with feature columns.

Columns are found by their REST header names ("Entry", "Entry Name", "Protein names", "Organism",
"Organism (ID)", "Length", "Sequence", "Function [CC]", "Keywords"); every column named after a feature
type ("Binding site", "Disulfide bond", "Signal peptide", ...) holds flat-file features written on one
line: `BINDING 33..41; /ligand="ATP"; /evidence="ECO:..."; BINDING 56; ...`. A cell that cannot be
read that way is dropped with a warning, the rest of the row kept. UniProt does not quote TSV fields,
so rows are split on tabs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TextIO

from storage.errors import ParseError
from storage.protein import Protein, ProteinFeature
from storage.uniprot_formats._common import (
    RecordError,
    RecordProblem,
    Where,
    build_protein,
    check_sequence,
    clean_function,
    eco_codes,
    name_from_text,
    rest_type,
    strip_evidence,
)
from storage.uniprot_formats.flatfile import flat_feature

_KEY = re.compile(r"\s*([A-Z_]+) (?:([A-Za-z0-9_.-]+):)?([<>?]?\d*)(?:\.\.([<>?]?\d*))?\s*(?:;|$)")
_QUALIFIER = re.compile(r'\s*/(\w+)="(.*?)"\s*(?:;(?=\s*(?:/\w+=|[A-Z_]+ ))|;?\s*$)')


def is_tsv_header(line: str) -> bool:
    return "\t" in line and line.split("\t", 1)[0].strip() in ("Entry", "Entry Name")


def parse_tsv(stream: TextIO, where: Where) -> Iterator[Protein | RecordError]:
    header_line = stream.readline()
    header = header_line.rstrip("\r\n").split("\t")
    if "Entry" not in header:
        raise ParseError("the TSV has no 'Entry' column", path=where.path, line=1)
    if "Sequence" not in header:
        raise ParseError("the TSV has no 'Sequence' column; export it with the Sequence field",
                         path=where.path, line=1)
    feature_columns = [(i, name) for i, name in enumerate(header) if rest_type(name)]
    for number, line in enumerate(stream, 2):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        where.record, where.line = fields[0] or None, number
        if len(fields) != len(header):
            yield where.error(f"the row has {len(fields)} fields but the header has {len(header)} "
                              "(truncated row?)")
            continue
        yield _row(dict(zip(header, fields, strict=True)), fields, feature_columns, where)


def _row(row: dict[str, str], fields: list[str], feature_columns: list[tuple[int, str]],
         where: Where) -> Protein | RecordError:
    try:
        declared = row.get("Length", "").strip()
        if declared and not declared.isdigit():
            raise RecordProblem(f"the Length {declared!r} is not a number")
        sequence = check_sequence(row["Sequence"].strip(), int(declared) if declared else None)
        taxon = row.get("Organism (ID)", "").strip()
        features: list[ProteinFeature | None] = []
        for index, name in feature_columns:
            if fields[index].strip():
                try:
                    features.extend(_cell_features(fields[index], name, where, len(sequence)))
                except RecordProblem as exc:  # e.g. an export in a syntax older than 2019
                    where.warning(f"{exc}; the column's features are dropped")
        return build_protein(
            where, accession=row["Entry"].strip(), sequence=sequence, declared_length=None,
            entry_name=row.get("Entry Name", "").strip(),
            protein_name=name_from_text(row.get("Protein names")),
            organism=row.get("Organism", "").strip() or None,
            taxon_id=int(taxon) if taxon.isdigit() else None,
            function=_function(row.get("Function [CC]", "")),
            keywords=[k.strip() for k in row.get("Keywords", "").split(";") if k.strip()],
            features=features,
        )
    except RecordProblem as exc:
        return where.error(str(exc))


def _function(cell: str) -> str | None:
    parts = [part.strip() for part in re.split(r"(?:^|\s)FUNCTION: ", cell) if part.strip()]
    return clean_function(parts)


def _cell_features(cell: str, column: str, where: Where, length: int) -> list[ProteinFeature | None]:
    features: list[ProteinFeature | None] = []
    pos, cell = 0, cell.strip()
    current: tuple[str, str | None, str, str] | None = None
    qualifiers: dict[str, str] = {}

    def flush() -> None:
        if current is not None:
            key, isoform, start, end = current
            features.append(flat_feature(
                where, key, start, end, isoform, length, note=qualifiers.get("note"),
                ligand=qualifiers.get("ligand"), evidence=eco_codes(qualifiers.get("evidence")),
            ))

    while pos < len(cell):
        qualifier = _QUALIFIER.match(cell, pos)
        if qualifier and current is not None:
            qualifiers.setdefault(qualifier[1], strip_evidence(qualifier[2]) if qualifier[1] == "note"
                                  else qualifier[2])
            pos = qualifier.end()
            continue
        key = _KEY.match(cell, pos)
        if not key or not key[3]:
            raise RecordProblem(f"cannot read the {column!r} column near {cell[pos:pos + 40]!r}")
        flush()
        current, qualifiers = (key[1], key[2], key[3], key[4] or key[3]), {}
        pos = key.end()
    flush()
    return features
