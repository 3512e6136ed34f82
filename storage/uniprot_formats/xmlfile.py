"""UniProt XML (namespace http://uniprot.org/uniprot), current and pre-2019 (status attributes,
"metal ion-binding site" / "nucleotide phosphate-binding region" / "calcium-binding region" types).

Read with `iterparse`; every entry is cleared from the tree once converted, so memory stays flat.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import BinaryIO

from storage.errors import ParseError
from storage.protein import PositionModifier, Protein, ProteinFeature
from storage.uniprot_formats._common import (
    VARIANT_TYPES,
    XML_LEGACY_LIGAND,
    XML_TYPES,
    Position,
    RecordError,
    RecordProblem,
    Where,
    build_protein,
    check_sequence,
    clean_description,
    clean_function,
    legacy_ligand,
    make_feature,
    organism_name,
    sequence_change_text,
    status_code,
)

_STATUS: dict[str, PositionModifier] = {
    "less than": "<", "greater than": ">", "uncertain": "?", "unknown": "?"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(stream: BinaryIO, where: Where) -> Iterator[Protein | RecordError]:
    """Proteins and RecordErrors from a UniProt XML stream (root <uniprot>, or one <entry>)."""
    root: ET.Element | None = None
    depth = 0
    for event, element in ET.iterparse(stream, events=("start", "end")):
        if event == "start":
            if root is None:
                root = element
                if _local(root.tag) not in ("uniprot", "entry"):
                    raise ParseError(f"the XML root is <{_local(root.tag)}>, not a UniProt <uniprot> "
                                     "document", path=where.path)
            depth += 1
            continue
        depth -= 1
        if depth <= 1 and _local(element.tag) == "entry":
            yield _entry(element, where)
            if root is not element:
                root.clear()
    if root is None:
        raise ParseError("the XML has no elements", path=where.path)


def _entry(entry: ET.Element, where: Where) -> Protein | RecordError:
    ns = entry.tag[: entry.tag.index("}") + 1] if entry.tag.startswith("{") else ""
    accession = entry.findtext(f"{ns}accession")
    where.record, where.line = accession or entry.findtext(f"{ns}name"), None
    try:
        sequence_element = entry.find(f"{ns}sequence")
        if sequence_element is None:
            raise RecordProblem("the entry has no <sequence>")
        declared = sequence_element.get("length")
        sequence = check_sequence("".join((sequence_element.text or "").split()),
                                  int(declared) if declared and declared.isdigit() else None)
        evidence_types = {e.get("key"): e.get("type", "") for e in entry.iterfind(f"{ns}evidence")}
        features = [_feature(f, ns, where, len(sequence), evidence_types)
                    for f in entry.iterfind(f"{ns}feature")]
        organism = entry.find(f"{ns}organism")
        return build_protein(
            where, accession=accession, sequence=sequence, declared_length=None,
            entry_name=entry.findtext(f"{ns}name"), protein_name=_protein_name(entry, ns),
            organism=_organism(organism, ns), taxon_id=_taxon(organism, ns),
            function=clean_function(
                text.text or "" for comment in entry.iterfind(f"{ns}comment")
                if comment.get("type") == "function" for text in comment.iterfind(f"{ns}text")
            ),
            keywords=[k.text.strip() for k in entry.iterfind(f"{ns}keyword") if k.text],
            features=features,
        )
    except RecordProblem as exc:
        return where.error(str(exc))


def _protein_name(entry: ET.Element, ns: str) -> str | None:
    protein = entry.find(f"{ns}protein")
    if protein is None:
        return None
    for path in (f"{ns}recommendedName/{ns}fullName", f"{ns}submittedName/{ns}fullName"):
        name = protein.findtext(path)
        if name:
            return name.strip()
    return None


def _organism(organism: ET.Element | None, ns: str) -> str | None:
    if organism is None:
        return None
    names: dict[str, list[str]] = {}
    for name in organism.iterfind(f"{ns}name"):
        if name.text:
            names.setdefault(name.get("type", ""), []).append(name.text.strip())
    scientific = names.get("scientific", [None])[0]
    common = names.get("common", [None])[0]
    return organism_name(scientific, common, names.get("synonym", []))


def _taxon(organism: ET.Element | None, ns: str) -> int | None:
    if organism is None:
        return None
    for reference in organism.iterfind(f"{ns}dbReference"):
        if reference.get("type") == "NCBI Taxonomy" and (reference.get("id") or "").isdigit():
            return int(reference.get("id", ""))
    return None


def _position(element: ET.Element | None) -> Position:
    if element is None:
        return None, "?"
    value = element.get("position")
    modifier = _STATUS.get(element.get("status") or "")
    if value is None or not value.isdigit():
        return None, "?"
    return int(value), modifier


def _feature(feature: ET.Element, ns: str, where: Where, length: int,
             evidence_types: dict[str | None, str]) -> ProteinFeature | None:
    kind = feature.get("type", "")
    legacy_key = XML_LEGACY_LIGAND.get(kind)
    type_ = "Binding site" if legacy_key else XML_TYPES.get(kind)
    if type_ is None:
        where.warning(f"unknown feature type {kind!r}; dropped")
        return None
    location = feature.find(f"{ns}location")
    if location is None:
        raise RecordProblem(f"a {kind} feature has no <location>")
    if location.get("sequence"):
        where.warning(f"{type_} on {location.get('sequence')} lies on another sequence; dropped")
        return None
    single = location.find(f"{ns}position")
    if single is not None:
        start = end = _position(single)
    else:
        start, end = _position(location.find(f"{ns}begin")), _position(location.find(f"{ns}end"))
    evidence = [evidence_types.get(key, "") for key in (feature.get("evidence") or "").split()]
    evidence.append(status_code(feature.get("status")) or "")
    ligand = feature.findtext(f"{ns}ligand/{ns}name")
    description: str | None = feature.get("description")
    if legacy_key or (type_ == "Binding site" and ligand is None):
        ligand, description = legacy_ligand(legacy_key or "BINDING", clean_description(description))
    elif type_ in VARIANT_TYPES:
        original = feature.findtext(f"{ns}original")
        variations = [v.text or "" for v in feature.iterfind(f"{ns}variation")]
        description = sequence_change_text(type_, original, variations, description)
    else:
        description = clean_description(description)
    return make_feature(where, type_, start, end, length, description=description, ligand=ligand,
                        evidence=[code for code in evidence if code.startswith("ECO:")])
