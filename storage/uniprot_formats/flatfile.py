"""UniProtKB flat files (.dat / .txt), the current syntax and the older ones.

Current (2019-11 on): `FT   KEY             12..40` with `/note=`, `/ligand=`, `/evidence=` qualifiers.
Pre-2019: column-style `FT   KEY      from     to       note` with continuation lines, NP_BIND / METAL /
CA_BIND keys, "(By similarity)" qualifiers, `/FTId=` lines; ID lines `NAME  Reviewed;  246 AA.` or
the older `NAME  STANDARD;  PRT;  246 AA.`; pre-2008 free-text DE lines.

One record is held in memory at a time (and only the line types used), so memory is flat in file size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from storage.protein import Protein, ProteinFeature
from storage.uniprot_formats._common import (
    FLAT_KEY_TYPES,
    LEGACY_LIGAND_KEYS,
    VARIANT_TYPES,
    RecordError,
    RecordProblem,
    Where,
    build_protein,
    check_sequence,
    clean_description,
    clean_function,
    eco_codes,
    join_wrapped,
    legacy_ligand,
    make_feature,
    name_from_text,
    parse_position,
    pop_legacy_status,
    strip_evidence,
    unwrap_sequence_change,
)

_KEPT = frozenset({"AC", "DE", "OS", "OX", "CC", "KW", "FT"})
_ID_LINE = re.compile(r"ID   (\S+)\s+.*?(\d+)\s+AA\.")
_TAXON = re.compile(r"NCBI_TaxID=(\d+)")
_FULL_NAME = re.compile(r"Full=(.*?);?\s*$")
_OLD_POSITION = re.compile(r"[<>?]?\d+|\?")
_MODERN_LOCATION = re.compile(r"(?:([A-Za-z0-9_.-]+):)?([<>?]?\d*)(?:\.\.([<>?]?\d*))?")
_QUALIFIER = re.compile(r'/(\w+)="?(.*?)"?$', re.S)


class _Record:
    __slots__ = ("line", "id_line", "lines", "sequence", "in_sequence")

    def __init__(self, line: int, id_line: str) -> None:
        self.line = line
        self.id_line = id_line
        self.lines: dict[str, list[str]] = {}
        self.sequence: list[str] = []
        self.in_sequence = False


def parse_flat(lines: Iterable[str], where: Where) -> Iterator[Protein | RecordError]:
    """Proteins and RecordErrors from the lines of a flat file, one record at a time."""
    record: _Record | None = None
    stray_at: int | None = None
    for number, line in enumerate(lines, 1):
        where.line = number
        code = line[:2]
        if code == "ID":
            if record is not None:
                yield _error(where, record, "the record ends without '//' before the next ID line "
                             "(truncated record)")
            record = _Record(number, line)
        elif record is None:
            if line.strip() and stray_at is None:
                stray_at = number
                yield RecordError(where.path, "text outside any record (expected an ID line)", None, number)
        elif code == "//":
            yield _finish(where, record)
            record, stray_at = None, None
        elif record.in_sequence:
            record.sequence.append(line)
        elif code == "SQ":
            record.in_sequence = True
        elif code in _KEPT:
            record.lines.setdefault(code, []).append(line.rstrip("\r\n"))
    if record is not None:
        yield _error(where, record, "the file ends inside this record, without '//' (truncated record)")


def _error(where: Where, record: _Record, reason: str) -> RecordError:
    accession = _accessions(record)
    return RecordError(where.path, reason, accession[0] if accession else _entry_name(record), record.line)


def _entry_name(record: _Record) -> str | None:
    parts = record.id_line.split()
    return parts[1] if len(parts) > 1 else None


def _accessions(record: _Record) -> list[str]:
    text = " ".join(line[5:] for line in record.lines.get("AC", []))
    return [a.strip() for a in text.split(";") if a.strip()]


def _finish(where: Where, record: _Record) -> Protein | RecordError:
    accessions = _accessions(record)
    where.record = accessions[0] if accessions else _entry_name(record)
    where.line = record.line
    try:
        match = _ID_LINE.match(record.id_line)
        if not match:
            raise RecordProblem(f"malformed ID line {record.id_line.strip()!r}")
        if not accessions:
            raise RecordProblem("the record has no AC line")
        sequence = check_sequence("".join("".join(record.sequence).split()), int(match[2]))
        get = record.lines.get
        features = _features(get("FT", []), where, len(sequence))
        return build_protein(
            where, accession=accessions[0], sequence=sequence, declared_length=None,
            entry_name=match[1], protein_name=_protein_name(get("DE", [])),
            organism=" ".join(line[5:].strip() for line in get("OS", [])).rstrip(".") or None,
            taxon_id=_taxon(get("OX", [])), function=_function(get("CC", [])),
            keywords=_keywords(get("KW", [])), features=features,
        )
    except RecordProblem as exc:
        return where.error(str(exc))


def _taxon(lines: list[str]) -> int | None:
    match = _TAXON.search(" ".join(lines))
    return int(match[1]) if match else None


def _protein_name(lines: list[str]) -> str | None:
    contents = [line[5:] for line in lines]
    for prefix in ("RecName:", "SubName:"):
        for content in contents:
            if content.startswith(prefix):
                match = _FULL_NAME.search(content)
                if match:
                    return strip_evidence(match[1]) or None
    if contents and not contents[0].startswith(("AltName:", "Flags:", "Contains:", "Includes:")):
        text = name_from_text(join_wrapped(contents))  # pre-2008 free text: "Name (Alt) (EC ...)."
        if text and text.endswith(" precursor"):
            text = text[: -len(" precursor")]
        return text
    return None


def _function(lines: list[str]) -> str | None:
    topics: list[list[str]] = []
    in_function = False
    for line in lines:
        content = line[5:]
        if content.startswith("-----"):  # the copyright block closes the comments
            break
        if content.startswith("-!- "):
            in_function = content.startswith("-!- FUNCTION:")
            if in_function:
                topics.append([content[len("-!- FUNCTION:"):]])
        elif in_function:
            topics[-1].append(content)
    return clean_function(join_wrapped(topic) for topic in topics)


def _keywords(lines: list[str]) -> list[str]:
    text = " ".join(line[5:].strip() for line in lines).rstrip(".")
    return [strip_evidence(k).rstrip(".") for k in text.split(";") if k.strip()]


# --- features ------------------------------------------------------------------------------------------


class _Draft:
    """One FT entry as read: its key, location tokens and either qualifiers or (old style) note lines."""

    __slots__ = ("key", "start", "end", "isoform", "old_style", "note_lines", "qualifiers")

    def __init__(self, key: str) -> None:
        self.key = key
        self.start = self.end = ""
        self.isoform: str | None = None
        self.old_style = False
        self.note_lines: list[str] = []
        self.qualifiers: list[str] = []


def _drafts(lines: list[str]) -> Iterator[_Draft]:
    draft: _Draft | None = None
    for line in lines:
        if len(line) > 5 and line[5] != " ":
            if draft is not None:
                yield draft
            key, _, rest = line[5:].partition(" ")
            draft = _Draft(key)
            tokens = rest.split(None, 2)
            if len(tokens) >= 2 and _OLD_POSITION.fullmatch(tokens[0]) and _OLD_POSITION.fullmatch(tokens[1]):
                draft.old_style = True
                draft.start, draft.end = tokens[0], tokens[1]
                if len(tokens) == 3:
                    draft.note_lines.append(tokens[2])
            else:
                match = _MODERN_LOCATION.fullmatch(tokens[0]) if tokens else None
                if not match:
                    raise RecordProblem(f"bad feature location on line {line.strip()!r}")
                draft.isoform = match[1]
                draft.start = match[2]
                draft.end = match[3] if match[3] is not None else match[2]
        elif draft is not None:
            content = line[2:].strip()
            if draft.old_style and not content.startswith("/FTId="):
                draft.note_lines.append(content)
            elif content.startswith("/") and (not draft.qualifiers or _closed(draft.qualifiers[-1])):
                draft.qualifiers.append(content)
            elif draft.qualifiers:
                draft.qualifiers[-1] += "\n" + content
    if draft is not None:
        yield draft


def _closed(qualifier: str) -> bool:
    """Whether a qualifier's quoted value has ended (an even number of quotes so far)."""
    return qualifier.count('"') % 2 == 0


def _qualifiers(draft: _Draft) -> dict[str, str]:
    found: dict[str, str] = {}
    for text in draft.qualifiers:
        match = _QUALIFIER.match(text)
        if match:
            found.setdefault(match[1], join_wrapped(match[2].split("\n")))
    return found


def _features(lines: list[str], where: Where, length: int) -> list[ProteinFeature | None]:
    features: list[ProteinFeature | None] = []
    for draft in _drafts(lines):
        if draft.old_style:
            note, evidence = pop_legacy_status(strip_evidence(join_wrapped(draft.note_lines)))
            evidence += eco_codes(*draft.note_lines)
            ligand = None
        else:
            qualifiers = _qualifiers(draft)
            note, evidence = qualifiers.get("note"), eco_codes(qualifiers.get("evidence"))
            ligand = qualifiers.get("ligand")
        features.append(flat_feature(where, draft.key, draft.start, draft.end, draft.isoform, length,
                                     note=note, ligand=ligand, evidence=evidence))
    return features


def flat_feature(where: Where, key: str, start: str, end: str, isoform: str | None, length: int, *,
                 note: str | None, ligand: str | None, evidence: tuple[str, ...]) -> ProteinFeature | None:
    """A feature from flat-file parts (also what the REST TSV feature columns hold)."""
    type_ = FLAT_KEY_TYPES.get(key)
    if type_ is None:
        where.warning(f"unknown feature key {key!r}; dropped")
        return None
    if isoform:
        where.warning(f"{type_} at {isoform}:{start}..{end} lies on another sequence; dropped")
        return None
    note = clean_description(note)
    if key in LEGACY_LIGAND_KEYS or (key == "BINDING" and ligand is None):
        ligand, note = legacy_ligand(key, note)
    if type_ in VARIANT_TYPES and note:
        note = unwrap_sequence_change(note)
    return make_feature(where, type_, parse_position(start), parse_position(end), length,
                        description=note, ligand=ligand, evidence=evidence)
