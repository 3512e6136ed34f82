"""Limits on what a request may carry, and the checks of a pasted sequence.

A paste may be a bare sequence, FASTA (header lines start with '>'; only the first record is read), or
a UniProt accession of a protein in the workspace. Whitespace and digits (the position numbers of a
GenBank or UniProt flat-file block) are dropped; anything else that is not a residue ESM-2 reads is
refused with its character and position. Every refusal is a `PasteError` whose message is one line
meant for the page.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field

from sae.plm import RESIDUES
from storage.errors import InputError

ACCESSION = re.compile(r"[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2}")
_DROPPED = re.compile(r"[\s0-9]+")
_INVALID = re.compile(f"[^{RESIDUES}]")


class Limits(BaseModel):
    """What one request may carry (defaults fit a laptop; `plmlabel serve` flags override them)."""

    model_config = ConfigDict(frozen=True)

    max_body_bytes: int = Field(64 * 1024, ge=1024)  # a form post; 64 KiB holds a FASTA of any real protein
    max_residues: int = Field(2000, ge=1)  # a longer paste is refused before the model runs
    max_query_chars: int = Field(200, ge=1)  # the search box
    max_results: int = Field(200, ge=1)  # search rows per page
    max_fired: int = Field(50, ge=1)  # features listed for a pasted sequence


class PasteError(InputError):
    """A paste that cannot be analysed; the message says why, for the page."""


class Paste(BaseModel):
    """A checked paste: the sequence, and the accession when one named a workspace protein."""

    sequence: str
    name: str  # what the page calls it: the accession, the FASTA header or "pasted sequence"
    accession: str | None = None


def parse_form(body: bytes, *, max_fields: int = 8) -> dict[str, str]:
    """An application/x-www-form-urlencoded body as {name: last value}; PasteError if it is not text."""
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8",
                          errors="strict", max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PasteError("the form could not be read: it is not text (was a binary file pasted?).") from exc
    return dict(pairs)


def _printable(text: str) -> bool:
    return all(ch in "\t\r\n" or unicodedata.category(ch)[0] != "C" for ch in text)


def looks_like_accession(text: str) -> bool:
    return bool(ACCESSION.fullmatch(text.strip().upper()))


def check_paste(text: str, limits: Limits) -> Paste:
    """The sequence of a pasted text (bare or FASTA); PasteError naming the problem."""
    if "\x00" in text or not _printable(text):
        raise PasteError("the paste holds control characters or binary data, not a protein sequence.")
    name = "pasted sequence"
    lines = text.strip().splitlines()
    if lines and lines[0].lstrip().startswith(">"):
        name = lines[0].strip()[1:].strip()[:80] or name
        body = []
        for line in lines[1:]:
            if line.lstrip().startswith(">"):
                break  # only the first FASTA record
            body.append(line)
        lines = body
    sequence = _DROPPED.sub("", "".join(lines)).upper()
    if not sequence:
        raise PasteError("the paste holds no sequence: paste amino acids (one-letter codes) or a UniProt "
                         "accession of a protein in this workspace.")
    if len(sequence) > limits.max_residues:
        raise PasteError(f"the sequence has {len(sequence):,} residues; this server reads at most "
                         f"{limits.max_residues:,} (plmlabel serve --max-residues).")
    bad = _INVALID.search(sequence)
    if bad:
        char = bad.group()
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        raise PasteError(f"residue {bad.start() + 1} is {shown}, which is not an amino acid ESM-2 reads "
                         f"(allowed: {RESIDUES}).")
    return Paste(sequence=sequence, name=name)
