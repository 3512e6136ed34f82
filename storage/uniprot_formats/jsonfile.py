"""UniProt REST JSON: `{"results": [entry, ...]}` (a search or stream answer), a bare list of entries,
or one entry object.

The `results` list is streamed: entries are decoded one at a time from a growing text buffer, so memory
holds one entry (plus a read chunk), not the file. Keys other than `results` are decoded whole; UniProt
puts none of any size there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

from storage.errors import ParseError
from storage.protein import PositionModifier, Protein, ProteinFeature
from storage.uniprot_formats._common import (
    REST_LEGACY_LIGAND,
    VARIANT_TYPES,
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
    rest_type,
    sequence_change_text,
)

_CHUNK = 1 << 16
_DECODER = json.JSONDecoder()


class _Stream:
    """A cursor over JSON text read in chunks; `value()` decodes the next complete value."""

    def __init__(self, stream: TextIO, where: Where) -> None:
        self.stream = stream
        self.where = where
        self.buffer = ""
        self.pos = 0
        self.eof = False

    def _fill(self, at_least: int = _CHUNK) -> None:
        data = self.stream.read(max(at_least, _CHUNK))
        if not data:
            self.eof = True
        self.buffer = self.buffer[self.pos:] + data
        self.pos = 0

    def peek(self) -> str:
        """The next non-blank character ("" at the end of the text)."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos].isspace():
                self.pos += 1
            if self.pos < len(self.buffer) or self.eof:
                return self.buffer[self.pos] if self.pos < len(self.buffer) else ""
            self._fill()

    def expect(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            self.fail(f"expected {' or '.join(repr(c) for c in chars)}")
        self.pos += 1
        return char

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    self.fail("not valid JSON")
                self._fill(len(self.buffer))  # double the buffer: amortised linear in the value size
                continue
            if end < len(self.buffer) or self.eof:  # a number at the very end may be cut short
                self.pos = end
                return value
            self._fill()

    def fail(self, reason: str) -> None:
        raise ParseError(f"{reason} in the UniProt JSON", path=self.where.path)


def iter_json_entries(stream: TextIO, where: Where) -> Iterator[dict[str, Any]]:
    """The entry objects of a UniProt JSON text, one at a time."""
    cursor = _Stream(stream, where)
    first = cursor.peek()
    if first == "[":
        yield from _array(cursor)
        return
    if first != "{":
        cursor.fail("expected a JSON object or list")
    cursor.expect("{")
    other: dict[str, Any] = {}
    found = False
    while cursor.peek() != "}":
        key = cursor.value()
        if not isinstance(key, str):
            cursor.fail("expected a key")
        cursor.expect(":")
        if key == "results":
            if cursor.peek() != "[":
                cursor.fail("'results' is not a list")
            found = True
            yield from _array(cursor)
        else:
            other[key] = cursor.value()
        if cursor.expect(",}") == "}":
            break
    else:
        cursor.expect("}")
    if not found:
        if "primaryAccession" in other:
            yield other
        else:
            raise ParseError("the JSON has no 'results' list of UniProt entries", path=where.path)


def _array(cursor: _Stream) -> Iterator[Any]:
    cursor.expect("[")
    if cursor.peek() == "]":
        cursor.pos += 1
        return
    while True:
        yield cursor.value()
        if cursor.expect(",]") == "]":
            return


def parse_json(stream: TextIO, where: Where) -> Iterator[Protein | RecordError]:
    for number, entry in enumerate(iter_json_entries(stream, where), 1):
        yield protein_from_json(entry, where, number)


def protein_from_json(entry: Any, where: Where, number: int | None = None) -> Protein | RecordError:
    """One REST JSON entry as a Protein (or a RecordError saying why not)."""
    if not isinstance(entry, dict):
        where.record, where.line = f"#{number}" if number else None, None
        return where.error("the entry is not a JSON object")
    where.record = entry.get("primaryAccession") or (f"#{number}" if number else None)
    where.line = None
    try:
        if str(entry.get("entryType", "")).startswith("Inactive"):
            raise RecordProblem("the entry is inactive (merged or deleted) and has no sequence")
        sequence_info = entry.get("sequence") or {}
        sequence = check_sequence(str(sequence_info.get("value") or ""), sequence_info.get("length"))
        organism = entry.get("organism") or {}
        return build_protein(
            where, accession=entry.get("primaryAccession"), sequence=sequence, declared_length=None,
            entry_name=entry.get("uniProtkbId"), protein_name=_protein_name(entry),
            organism=organism_name(organism.get("scientificName"), organism.get("commonName"),
                                   organism.get("synonyms") or ()),
            taxon_id=organism.get("taxonId"),
            function=clean_function(
                text.get("value", "") for comment in entry.get("comments") or ()
                if comment.get("commentType") == "FUNCTION" for text in comment.get("texts") or ()
            ),
            keywords=[k.get("name") for k in entry.get("keywords") or ()],
            features=[_feature(f, where, len(sequence)) for f in entry.get("features") or ()],
        )
    except RecordProblem as exc:
        return where.error(str(exc))
    except (AttributeError, TypeError, ValueError) as exc:
        return where.error(f"malformed entry ({exc})")


def _protein_name(entry: dict[str, Any]) -> str | None:
    description = entry.get("proteinDescription") or {}
    name = description.get("recommendedName") or next(iter(description.get("submissionNames") or ()), None)
    return ((name or {}).get("fullName") or {}).get("value")


def _position(position: dict[str, Any] | None, outside: PositionModifier) -> Position:
    position = position or {}
    value = position.get("value")
    modifier = {"OUTSIDE": outside, "UNSURE": "?", "UNKNOWN": "?"}.get(position.get("modifier", "EXACT"))
    if value is None:
        return None, "?"
    return int(value), modifier


def _feature(feature: dict[str, Any], where: Where, length: int) -> ProteinFeature | None:
    kind = feature.get("type", "")
    type_ = rest_type(kind)
    if type_ is None:
        where.warning(f"unknown feature type {kind!r}; dropped")
        return None
    location = feature.get("location") or {}
    if location.get("sequence"):
        where.warning(f"{type_} on {location['sequence']} lies on another sequence; dropped")
        return None
    start, end = _position(location.get("start"), "<"), _position(location.get("end"), ">")
    evidence = [e.get("evidenceCode", "") for e in feature.get("evidences") or ()]
    ligand = (feature.get("ligand") or {}).get("name")
    description = feature.get("description")
    legacy_key = REST_LEGACY_LIGAND.get(kind)
    if legacy_key or (type_ == "Binding site" and ligand is None):
        ligand, description = legacy_ligand(legacy_key or "BINDING", clean_description(description))
    elif type_ in VARIANT_TYPES:
        change = feature.get("alternativeSequence") or {}
        description = sequence_change_text(type_, change.get("originalSequence"),
                                           list(change.get("alternativeSequences") or ()), description)
    else:
        description = clean_description(description)
    return make_feature(where, type_, start, end, length, description=description, ligand=ligand,
                        evidence=[code for code in evidence if code.startswith("ECO:")])
