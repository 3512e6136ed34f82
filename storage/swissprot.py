"""Read UniProtKB / Swiss-Prot files into `Protein`s, whatever the format UniProt served them in.

    detect_format(path) -> "flat" | "xml" | "json" | "tsv"       (from the content, never the name)
    parse_file(path) -> Iterator[Protein | RecordError]           (streaming; .gz read transparently)
    UniProtReader(path)                                            (the same, with bytes_read for progress)

A bad record is yielded as a `RecordError` (file, record, line, reason), never raised: the caller decides
whether to skip it or abort. A file that cannot be read at all (empty, not UniProt, broken gzip,
malformed XML/JSON) raises `storage.errors.ParseError`, possibly after some records were yielded.
A feature that cannot be placed on the sequence is dropped and reported through `on_warning`
(default: a `UniProtWarning` via the warnings module).

Formats: flat file (current syntax and the pre-2019 ones), UniProt XML, REST JSON, REST TSV; one module
each in storage/uniprot_formats/, sharing the normalisation rules described in its `_common` module.
"""

from __future__ import annotations

import gzip
import io
import re
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from storage.errors import NotFoundError, ParseError
from storage.protein import Protein, ProteinFeature
from storage.uniprot_formats._common import RecordError, Where
from storage.uniprot_formats.flatfile import parse_flat
from storage.uniprot_formats.jsonfile import parse_json
from storage.uniprot_formats.tsvfile import is_tsv_header, parse_tsv
from storage.uniprot_formats.xmlfile import parse_xml

__all__ = ["FORMATS", "Format", "Protein", "ProteinFeature", "RecordError", "UniProtReader", "UniProtWarning",
           "detect_format", "parse_file"]

Format = Literal["flat", "xml", "json", "tsv"]
FORMATS: tuple[Format, ...] = ("flat", "xml", "json", "tsv")

_GZIP_MAGIC = b"\x1f\x8b"
_HEAD_BYTES = 1 << 16
_FIRST_TAG = re.compile(r"<(?![?!])(?:[\w.-]+:)?([\w.-]+)")
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class UniProtWarning(UserWarning):
    """Something in a record was skipped (a feature off the sequence, an unknown feature key)."""


def _warn(message: str) -> None:
    warnings.warn(message, UniProtWarning, stacklevel=3)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != _GZIP_MAGIC:
                raw.seek(0)
                return raw.read(_HEAD_BYTES)
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as stream:
                return stream.read(_HEAD_BYTES)
    except _GZIP_ERRORS as exc:
        raise ParseError(f"the gzip data is truncated or corrupt ({exc})", path=str(path)) from exc


def detect_format(path: str | Path) -> Format:
    """The UniProt format of a file, judged from its first 64 KiB (decompressed)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise ParseError("the file is empty", path=str(path))
    head = _head(path)
    if b"\x00" in head:
        raise ParseError("not a UniProt file (binary content)", path=str(path))
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        raise ParseError("the file is empty (only blank lines)", path=str(path))
    if text.startswith("ID   "):
        return "flat"
    if text.startswith("<"):
        match = _FIRST_TAG.search(text)
        if match and match[1] in ("uniprot", "entry"):
            return "xml"
        tag = f"<{match[1]}>" if match else "no element"
        raise ParseError(f"not UniProt XML (the document starts with {tag}, not <uniprot>)", path=str(path))
    if text[0] in "{[":
        return "json"
    if is_tsv_header(text.split("\n", 1)[0]):
        return "tsv"
    raise ParseError("not a UniProt file: expected a flat file (ID line), UniProt XML, REST JSON or "
                     "REST TSV (Entry column)", path=str(path), line=1)


class UniProtReader:
    """Iterate a UniProt file's records; `bytes_read` (of `size`, on disk) drives a progress bar.

    The format is detected on construction, so a file that is no UniProt file fails before any work.
    """

    def __init__(self, path: str | Path, *, on_warning: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.format: Format = detect_format(self.path)
        self.size = self.path.stat().st_size
        self.on_warning = on_warning or _warn
        self._raw: BinaryIO | None = None
        self._done = False

    @property
    def bytes_read(self) -> int:
        if self._done:
            return self.size
        if self._raw is None or self._raw.closed:
            return 0
        return min(self._raw.tell(), self.size)

    def __iter__(self) -> Iterator[Protein | RecordError]:
        where = Where(str(self.path), self.on_warning)
        with open(self.path, "rb") as raw:
            self._raw = raw
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if _is_gzip(self.path) else raw  # type: ignore[assignment]
            try:
                yield from self._records(stream, where)
            except _GZIP_ERRORS as exc:
                raise ParseError(f"the gzip data is truncated or corrupt ({exc})", path=str(self.path),
                                 line=where.line if self.format in ("flat", "tsv") else None) from exc
            except ET.ParseError as exc:
                reason = str(exc).split(":", 1)[0]
                raise ParseError(f"the XML is not well-formed or is cut short ({reason})",
                                 path=str(self.path), line=exc.position[0]) from exc
        self._done = True

    def _records(self, stream: BinaryIO, where: Where) -> Iterator[Protein | RecordError]:
        if self.format == "xml":
            yield from parse_xml(stream, where)
            return
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace",
                                newline="" if self.format == "tsv" else None)
        if self.format == "flat":
            yield from parse_flat(text, where)
        elif self.format == "json":
            yield from parse_json(text, where)
        else:
            yield from parse_tsv(text, where)


def parse_file(path: str | Path, *,
               on_warning: Callable[[str], None] | None = None) -> Iterator[Protein | RecordError]:
    """Proteins and RecordErrors of a UniProt file, streamed. Raises ParseError for an unreadable file."""
    return iter(UniProtReader(path, on_warning=on_warning))
