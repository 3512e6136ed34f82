"""What every UniProt format shares: record errors, the feature-type vocabulary maps, text clean-up,
and the rules that turn raw positions into `ProteinFeature`s.

Normalisation (the same in every format, so an entry reads the same whichever file it came from):
- feature types become the UniProt REST names (storage.protein.FEATURE_TYPES);
- the pre-2019 ligand keys NP_BIND, METAL and CA_BIND (and BINDING without /ligand) become
  "Binding site" with the ligand taken from the note ("Magnesium; via carbonyl oxygen" -> ligand
  "Magnesium", description "via carbonyl oxygen"); CA_BIND's ligand is "Calcium";
- the pre-2014 qualifiers "(By similarity)", "(Potential)", "(Probable)" become the ECO codes UniProt
  mapped them to (ECO:0000250, ECO:0000255, ECO:0000305);
- evidence is the sorted set of ECO codes, without sources;
- descriptions lose one trailing period; variant-like features read as in the flat file
  ("A -> D (in dbSNP:rs1)", "D->A: Loss of activity", "Missing (in isoform 2)");
- a position beyond the sequence is clamped when it carries "<" / ">", otherwise the feature is dropped
  with a warning; a location on another sequence (an isoform) is dropped with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from storage.protein import FEATURE_TYPES, PositionModifier, Protein, ProteinFeature

Warn = Callable[[str], None]
Position = tuple[int | None, PositionModifier]


@dataclass(frozen=True)
class RecordError:
    """One record that could not be read. Parsers yield these rather than raise: the caller decides."""

    path: str
    reason: str
    record: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = [self.path]
        if self.record:
            where.append(f"record {self.record}")
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{', '.join(where)}: {self.reason}"


class RecordProblem(Exception):
    """Raised inside a format parser for one bad record; the parser turns it into a RecordError."""


@dataclass
class Where:
    """The file and record being parsed: the prefix of every message."""

    path: str
    warn: Warn
    record: str | None = None
    line: int | None = None

    def error(self, reason: str) -> RecordError:
        return RecordError(self.path, reason, self.record, self.line)

    def warning(self, message: str) -> None:
        self.warn(str(self.error(message)))


# --- feature types ------------------------------------------------------------------------------------

FLAT_KEY_TYPES: dict[str, str] = {
    "ACT_SITE": "Active site", "BINDING": "Binding site", "SITE": "Site", "ZN_FING": "Zinc finger",
    "DNA_BIND": "DNA binding", "DISULFID": "Disulfide bond", "CROSSLNK": "Cross-link",
    "MOD_RES": "Modified residue", "CARBOHYD": "Glycosylation", "LIPID": "Lipidation",
    "DOMAIN": "Domain", "REPEAT": "Repeat", "REGION": "Region", "MOTIF": "Motif",
    "COMPBIAS": "Compositional bias", "COILED": "Coiled coil", "TRANSMEM": "Transmembrane",
    "INTRAMEM": "Intramembrane", "TOPO_DOM": "Topological domain", "SIGNAL": "Signal",
    "TRANSIT": "Transit peptide", "PROPEP": "Propeptide", "PEPTIDE": "Peptide", "CHAIN": "Chain",
    "INIT_MET": "Initiator methionine", "NON_STD": "Non-standard residue", "HELIX": "Helix",
    "STRAND": "Beta strand", "TURN": "Turn", "VARIANT": "Natural variant",
    "VAR_SEQ": "Alternative sequence", "MUTAGEN": "Mutagenesis", "CONFLICT": "Sequence conflict",
    "UNSURE": "Sequence uncertainty", "NON_CONS": "Non-adjacent residues",
    "NON_TER": "Non-terminal residue",
    # keys retired over the years
    "NP_BIND": "Binding site", "METAL": "Binding site", "CA_BIND": "Binding site",
    "VARSPLIC": "Alternative sequence", "SE_CYS": "Non-standard residue", "THIOETH": "Cross-link",
    "THIOLEST": "Cross-link",
}

# Retired ligand keys, by the name each format gave them; their ligand lives in the note.
LEGACY_LIGAND_KEYS = frozenset({"NP_BIND", "METAL", "CA_BIND"})

XML_TYPES: dict[str, str] = {
    "active site": "Active site", "binding site": "Binding site", "site": "Site",
    "zinc finger region": "Zinc finger", "DNA-binding region": "DNA binding",
    "disulfide bond": "Disulfide bond", "cross-link": "Cross-link", "modified residue": "Modified residue",
    "glycosylation site": "Glycosylation", "lipid moiety-binding region": "Lipidation", "domain": "Domain",
    "repeat": "Repeat", "region of interest": "Region", "short sequence motif": "Motif",
    "compositionally biased region": "Compositional bias", "coiled-coil region": "Coiled coil",
    "transmembrane region": "Transmembrane", "intramembrane region": "Intramembrane",
    "topological domain": "Topological domain", "signal peptide": "Signal",
    "transit peptide": "Transit peptide", "propeptide": "Propeptide", "peptide": "Peptide",
    "chain": "Chain", "initiator methionine": "Initiator methionine",
    "non-standard amino acid": "Non-standard residue", "helix": "Helix", "strand": "Beta strand",
    "turn": "Turn", "sequence variant": "Natural variant", "splice variant": "Alternative sequence",
    "mutagenesis site": "Mutagenesis", "sequence conflict": "Sequence conflict",
    "unsure residue": "Sequence uncertainty", "non-consecutive residues": "Non-adjacent residues",
    "non-terminal residue": "Non-terminal residue",
}
XML_LEGACY_LIGAND = {
    "metal ion-binding site": "METAL", "nucleotide phosphate-binding region": "NP_BIND",
    "calcium-binding region": "CA_BIND",
}
REST_LEGACY_LIGAND = {"Metal binding": "METAL", "Nucleotide binding": "NP_BIND", "Calcium binding": "CA_BIND"}
REST_ALIASES = {"Signal peptide": "Signal"}

VARIANT_TYPES = frozenset({"Natural variant", "Sequence conflict", "Alternative sequence", "Mutagenesis"})

assert set(FLAT_KEY_TYPES.values()) <= set(FEATURE_TYPES)
assert set(XML_TYPES.values()) <= set(FEATURE_TYPES)


def rest_type(name: str) -> str | None:
    """A REST JSON type or TSV column name in our vocabulary, or None if it is not a feature type."""
    name = REST_ALIASES.get(name, name)
    if name in REST_LEGACY_LIGAND:
        return "Binding site"
    return name if name in FEATURE_TYPES else None


def legacy_ligand(key: str, note: str | None) -> tuple[str | None, str | None]:
    """(ligand, description) of a pre-2019 ligand feature, from its note."""
    if key == "CA_BIND":
        return "Calcium", note
    if not note:
        return None, None
    head, _, tail = note.partition(";")
    return head.strip() or None, tail.strip() or None


# --- evidence and text -----------------------------------------------------------------------------------

_LEGACY_STATUS = {"by similarity": "ECO:0000250", "potential": "ECO:0000255", "probable": "ECO:0000305"}
_STATUS_IN_TEXT = re.compile(
    r"\s*\((By similarity|Potential|Probable)\)|^(By similarity|Potential|Probable)\.?$")
_ECO = re.compile(r"ECO:\d{7}")
_BRACES_AFTER_PERIOD = re.compile(r"(?<=\.)\s*\{ECO:[^}]*\}\.")
_BRACES = re.compile(r"\s*\{ECO:[^}]*\}")


def status_code(status: str | None) -> str | None:
    """The ECO code of an old XML `status` attribute ("by similarity", "potential", "probable")."""
    return _LEGACY_STATUS.get((status or "").lower())


def pop_legacy_status(text: str | None) -> tuple[str | None, tuple[str, ...]]:
    """Take "(By similarity)", "(Potential)", "(Probable)" out of a pre-2014 note; return their ECO codes."""
    if not text:
        return text, ()
    codes: list[str] = []

    def take(match: re.Match[str]) -> str:
        codes.append(_LEGACY_STATUS[(match[1] or match[2]).lower()])
        return ""

    return _STATUS_IN_TEXT.sub(take, text).strip(), tuple(codes)


def eco_codes(*texts: str | None) -> tuple[str, ...]:
    found: set[str] = set()
    for text in texts:
        if text:
            found.update(_ECO.findall(text))
    return tuple(sorted(found))


def strip_evidence(text: str) -> str:
    """Drop `{ECO:...}` evidence braces: "Binds zinc. {ECO:0000250}." -> "Binds zinc."."""
    return _BRACES.sub("", _BRACES_AFTER_PERIOD.sub("", text)).strip()


def join_wrapped(parts: Iterable[str]) -> str:
    """Join lines wrapped by UniProt: with a space, except after a hyphen ending a word ("2-" "(methyl")."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out.endswith("-") and len(out) > 1 and out[-2] != " ":
            out += part
        else:
            out = f"{out} {part}" if out else part
    return out


def clean_description(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    if text.endswith(".") and not text.endswith("..."):
        text = text[:-1].rstrip()
    return text or None


_WRAPPED_CHANGE = re.compile(r"([A-Z][A-Z ]*?)( ?-> ?)([A-Z][A-Z, ]*?)(?=$|:| \(| or )")


def unwrap_sequence_change(text: str) -> str:
    """Remove the line-wrap spaces from the sequences of a flat-file change ("ABC DE -> F (in x)")."""
    match = _WRAPPED_CHANGE.match(text)
    if not match:
        return text
    before, arrow, after = match[1], match[2], match[3]
    return before.replace(" ", "") + arrow + after.replace(" ", "") + text[match.end():]


def sequence_change_text(type_: str, original: str | None, variations: list[str],
                         note: str | None) -> str | None:
    """The flat-file wording of an XML / JSON variant-like feature, so every format reads the same."""
    note = clean_description(note)
    if note and note.startswith("In "):
        note = "i" + note[1:]
    if type_ == "Mutagenesis":
        if not original:
            return note
        change = f"{original}->{','.join(variations)}"
        return f"{change}: {note}" if note else change
    if not original and not variations and type_ != "Alternative sequence":
        return note
    change = f"{original} -> {' or '.join(variations)}" if variations else "Missing"
    return f"{change} ({note})" if note else change


def name_from_text(text: str | None) -> str | None:
    """The recommended name out of "Name (Alt name) (EC 1.2.3.4) [Cleaved into: ...]" (TSV, old DE)."""
    if not text:
        return None
    for marker in (" [Cleaved into:", " [Includes:", " [Contains:"):
        text = text.split(marker, 1)[0]
    text = text.strip().rstrip(".")
    while text.endswith(")"):
        depth = 0
        for index in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[index], 0)
            if depth == 0:
                break
        if index <= 0 or text[index - 1] != " ":
            break
        text = text[: index - 1].rstrip()
    return text or None


def organism_name(scientific: str | None, common: str | None = None,
                  synonyms: Iterable[str] = ()) -> str | None:
    """The flat-file OS form every format is normalised to: "Homo sapiens (Human)"."""
    if not scientific:
        return None
    extra = [name for name in (common, *synonyms) if name]
    return " ".join([scientific, *(f"({name})" for name in extra)])


def clean_function(texts: Iterable[str]) -> str | None:
    joined = " ".join(strip_evidence(" ".join(t.split())) for t in texts if t and t.strip())
    return joined or None


# --- positions and features ------------------------------------------------------------------------------

_POSITION = re.compile(r"([<>?]?)(\d*)")


def parse_position(token: str) -> Position:
    """"12" -> (12, None); "<1" -> (1, "<"); ">300" -> (300, ">"); "?" -> (None, "?"); "?12" -> (12, "?")."""
    match = _POSITION.fullmatch(token.strip())
    if not match or not (match[1] or match[2]) or (not match[2] and match[1] != "?"):
        raise RecordProblem(f"bad feature position {token!r}")
    modifier: PositionModifier = match[1] or None  # type: ignore[assignment]
    return (int(match[2]) if match[2] else None), modifier


def _fit(value: int | None, modifier: PositionModifier, length: int) -> tuple[int | None, bool]:
    if value is None or 1 <= value <= length:
        return value, True
    if modifier in ("<", ">"):
        return min(max(value, 1), length), True
    return value, False


def _location_text(start: Position, end: Position) -> str:
    def one(position: Position) -> str:
        return f"{position[1] or ''}{'' if position[0] is None else position[0]}"

    return one(start) if start == end else f"{one(start)}..{one(end)}"


def make_feature(where: Where, type_: str, start: Position, end: Position, length: int, *,
                 description: str | None = None, ligand: str | None = None,
                 evidence: Iterable[str] = ()) -> ProteinFeature | None:
    """A ProteinFeature, or None (with a warning) when it does not lie on the sequence."""
    (s, s_mod), (e, e_mod) = start, end
    s, s_ok = _fit(s, s_mod, length)
    e, e_ok = _fit(e, e_mod, length)
    if not (s_ok and e_ok):
        where.warning(f"{type_} at {_location_text(start, end)} lies outside the {length}-residue "
                      "sequence; dropped")
        return None
    if s is not None and e is not None and s > e:
        where.warning(f"{type_} at {_location_text(start, end)} starts after it ends; dropped")
        return None
    return ProteinFeature(
        type=type_, start=s, end=e, start_modifier=s_mod, end_modifier=e_mod,
        description=description or None, ligand=ligand or None, evidence=tuple(sorted(set(evidence))),
    )


def check_sequence(sequence: str, declared_length: int | None) -> str:
    """The sequence in capitals; a RecordProblem if it is empty, has a non-letter, or is cut short."""
    if not sequence:
        raise RecordProblem("the entry has no sequence")
    if not (sequence.isascii() and sequence.isalpha()):
        for index, char in enumerate(sequence, 1):
            if not (char.isascii() and char.isalpha()):
                raise RecordProblem(f"the sequence has {char!r} at residue {index}; only letters are allowed")
    if declared_length is not None and declared_length != len(sequence):
        raise RecordProblem(f"the sequence has {len(sequence)} residues but the entry says "
                            f"{declared_length} (truncated record?)")
    return sequence.upper()


def build_protein(where: Where, *, accession: str | None, sequence: str, declared_length: int | None,
                  entry_name: str | None = None, protein_name: str | None = None,
                  organism: str | None = None, taxon_id: int | None = None, function: str | None = None,
                  keywords: Iterable[str] = (), features: Iterable[ProteinFeature | None] = ()) -> Protein:
    if not accession:
        raise RecordProblem("the entry has no accession")
    sequence = check_sequence(sequence, declared_length)
    try:
        return _protein(accession, entry_name, protein_name, organism, taxon_id, sequence, function, keywords,
                        features)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RecordProblem(f"malformed entry: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def _protein(accession: str, entry_name: str | None, protein_name: str | None, organism: str | None,
             taxon_id: int | None, sequence: str, function: str | None, keywords: Iterable[str],
             features: Iterable[ProteinFeature | None]) -> Protein:
    return Protein(
        accession=accession, entry_name=entry_name or None, protein_name=protein_name or None,
        organism=organism or None, taxon_id=taxon_id, length=len(sequence), sequence=sequence,
        function=function or None,
        keywords=tuple(sorted({k for k in keywords if k}, key=lambda k: (k.lower(), k))),
        features=tuple(f for f in features if f is not None),
    )
