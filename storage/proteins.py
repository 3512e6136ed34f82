"""Proteins in the workspace database: import (upsert by accession), read back, statistics.

An entry is stored with a hash of its parsed content: importing the same entry again changes nothing,
importing a changed entry replaces the row and all its features. Every import is one transaction, so a
failure part-way leaves the database as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from storage.db import Database, utcnow
from storage.errors import ParseError
from storage.protein import Protein, ProteinFeature
from storage.swissprot import RecordError, UniProtReader

_BATCH = 500  # accessions per IN query when reading
_WRITE_BATCH = 200  # proteins held in memory per write when importing (about 20 MB of parsed entries)
_PROTEIN_COLUMNS = ("accession", "entry_name", "protein_name", "organism", "taxon_id", "length", "sequence",
                    "function", "keywords", "source_format", "content_hash")
_FEATURE_COLUMNS = ("accession", "type", "start", "end", "start_modifier", "end_modifier", "description",
                    "ligand", "evidence")


def batched(items: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    """itertools.batched, which Python 3.11 lacks."""
    iterator = iter(items)
    while batch := tuple(islice(iterator, size)):
        yield batch


class ImportResult(BaseModel):
    """What an import did. imported + updated + unchanged == total (the proteins read)."""

    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    total: int = 0
    errors: list[RecordError] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"imported": self.imported, "updated": self.updated, "unchanged": self.unchanged,
                "total": self.total}

    def merge(self, other: ImportResult) -> None:
        self.imported += other.imported
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.total += other.total
        self.errors.extend(other.errors)


def content_hash(protein: Protein) -> str:
    return hashlib.sha256(protein.model_dump_json().encode()).hexdigest()


def record_failure(error: RecordError) -> ParseError:
    """A bad record as the exception that aborts an import."""
    return ParseError(error.reason, path=error.path, line=error.line, record=error.record)


# --- writing ---------------------------------------------------------------------------------------------


def import_proteins(db: Database, items: Iterable[Protein | RecordError], *, source_format: str | None = None,
                    result: ImportResult | None = None) -> ImportResult:
    """Upsert proteins by accession in one transaction; RecordErrors are collected in `result.errors`."""
    result = result if result is not None else ImportResult()
    with db.transaction():
        for batch in batched(items, _WRITE_BATCH):
            proteins: dict[str, Protein] = {}
            for item in batch:
                if isinstance(item, RecordError):
                    result.errors.append(item)
                    continue
                if item.accession in proteins:  # met twice in one batch: write the first one first
                    _upsert(db, list(proteins.values()), source_format, result)
                    proteins = {}
                proteins[item.accession] = item
            if proteins:
                _upsert(db, list(proteins.values()), source_format, result)
    return result


def _upsert(db: Database, proteins: list[Protein], source_format: str | None, result: ImportResult) -> None:
    """Write proteins with distinct accessions: insert new ones, replace changed ones, count the rest."""
    conn = db.db.conn
    accessions = [p.accession for p in proteins]
    marks = ",".join("?" * len(accessions))
    known = dict(conn.execute(f"select accession, content_hash from proteins where accession in ({marks})",
                              accessions).fetchall())
    now = utcnow()
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    features: list[tuple[Any, ...]] = []
    replaced: list[tuple[str]] = []
    for protein in proteins:
        digest = content_hash(protein)
        old = known.get(protein.accession)
        result.total += 1
        if old == digest:
            result.unchanged += 1
            continue
        row = _protein_row(protein, source_format, digest)
        if old is None:
            result.imported += 1
            inserts.append((*row, now, now))
        else:
            result.updated += 1
            updates.append((*row[1:], now, protein.accession))
            replaced.append((protein.accession,))
        features.extend(_feature_row(protein.accession, f) for f in protein.features)
    if inserts or updates:
        conn.executemany(f"insert into proteins ({', '.join(_PROTEIN_COLUMNS)}, imported_at, updated_at) "
                         f"values ({','.join('?' * (len(_PROTEIN_COLUMNS) + 2))})", inserts)
        assignments = ", ".join(f"{c} = ?" for c in _PROTEIN_COLUMNS[1:])
        conn.executemany(f"update proteins set {assignments}, updated_at = ? where accession = ?", updates)
        conn.executemany("delete from features where accession = ?", replaced)
        columns = ", ".join(f'"{c}"' for c in _FEATURE_COLUMNS)
        conn.executemany(f"insert into features ({columns}) values ({','.join('?' * len(_FEATURE_COLUMNS))})",
                         features)


def _protein_row(protein: Protein, source_format: str | None, digest: str) -> tuple[Any, ...]:
    return (protein.accession, protein.entry_name, protein.protein_name, protein.organism, protein.taxon_id,
            protein.length, protein.sequence, protein.function, json.dumps(list(protein.keywords)),
            source_format, digest)


def _feature_row(accession: str, feature: ProteinFeature) -> tuple[Any, ...]:
    return (accession, feature.type, feature.start, feature.end, feature.start_modifier, feature.end_modifier,
            feature.description, feature.ligand, json.dumps(list(feature.evidence)))


def import_files(db: Database, paths: Sequence[str | Path], *, strict: bool = False,
                 on_record_error: Callable[[RecordError], None] | None = None,
                 on_warning: Callable[[str], None] | None = None,
                 on_progress: Callable[[UniProtReader, int], None] | None = None) -> ImportResult:
    """Import UniProt files, all or nothing.

    Every file's format is checked before the database is touched. Then all files are imported in one
    transaction: a file that cannot be read, a file none of whose records can be read, or (with
    `strict`) any bad record raises ParseError and leaves the database as it was. Otherwise bad records
    are skipped, reported to `on_record_error` as they are met, and listed in the result.
    """
    readers = [UniProtReader(path, on_warning=on_warning) for path in paths]
    result = ImportResult()
    with db.transaction():
        for reader in readers:
            file_result = ImportResult()
            import_proteins(db, _checked(reader, strict, on_record_error, on_progress),
                            source_format=reader.format, result=file_result)
            if file_result.total == 0:
                if file_result.errors:
                    first = file_result.errors[0]
                    more = len(file_result.errors) - 1
                    raise ParseError(f"no record could be read: {first.reason}"
                                     + (f" (and {more} more bad records)" if more else ""),
                                     path=first.path, line=first.line, record=first.record)
                raise ParseError("the file holds no UniProt entries", path=str(reader.path))
            result.merge(file_result)
    return result


def _checked(reader: UniProtReader, strict: bool, on_record_error: Callable[[RecordError], None] | None,
             on_progress: Callable[[UniProtReader, int], None] | None) -> Iterator[Protein | RecordError]:
    # Bad records are held back until the file's first good one: a file with no good record at all
    # ends in one ParseError (raised by import_files) rather than a line per record.
    pending: list[RecordError] | None = []
    for done, item in enumerate(reader, 1):
        if isinstance(item, RecordError):
            if strict:
                raise record_failure(item)
            if pending is not None:
                pending.append(item)
            elif on_record_error is not None:
                on_record_error(item)
        elif pending is not None:
            if on_record_error is not None:
                for error in pending:
                    on_record_error(error)
            pending = None
        yield item
        if on_progress is not None:
            on_progress(reader, done)


# --- reading ---------------------------------------------------------------------------------------------


def _protein(row: dict[str, Any], features: list[dict[str, Any]]) -> Protein:
    return Protein(
        accession=row["accession"], entry_name=row["entry_name"], protein_name=row["protein_name"],
        organism=row["organism"], taxon_id=row["taxon_id"], length=row["length"], sequence=row["sequence"],
        function=row["function"], keywords=tuple(json.loads(row["keywords"] or "[]")),
        features=tuple(
            ProteinFeature(type=f["type"], start=f["start"], end=f["end"], start_modifier=f["start_modifier"],
                           end_modifier=f["end_modifier"], description=f["description"], ligand=f["ligand"],
                           evidence=tuple(json.loads(f["evidence"] or "[]")))
            for f in features
        ),
    )


def get_proteins(db: Database, accessions: Iterable[str]) -> dict[str, Protein]:
    """The stored proteins among `accessions`, by accession (missing ones are left out)."""
    found: dict[str, Protein] = {}
    for batch in batched(dict.fromkeys(accessions), _BATCH):
        marks = ",".join("?" * len(batch))
        rows = db.query(f"select * from proteins where accession in ({marks})", batch)
        features: dict[str, list[dict[str, Any]]] = {}
        for feature in db.query(f"select * from features where accession in ({marks}) order by id", batch):
            features.setdefault(feature["accession"], []).append(feature)
        for row in rows:
            found[row["accession"]] = _protein(row, features.get(row["accession"], []))
    return found


def get_protein(db: Database, accession: str) -> Protein | None:
    return get_proteins(db, [accession]).get(accession)


def all_accessions(db: Database) -> list[str]:
    return [row[0] for row in db.execute("select accession from proteins order by accession")]


def iter_proteins(db: Database, accessions: Iterable[str] | None = None) -> Iterator[Protein]:
    """Stored proteins, in accession order (or in the order given), read in batches."""
    if accessions is not None:
        for batch in batched(accessions, _BATCH):
            found = get_proteins(db, batch)
            yield from (found[a] for a in batch if a in found)
        return
    last = ""
    while True:
        batch = [row[0] for row in db.execute(
            "select accession from proteins where accession > ? order by accession limit ?", (last, _BATCH))]
        if not batch:
            return
        found = get_proteins(db, batch)
        yield from (found[a] for a in batch)
        last = batch[-1]


def protein_stats(db: Database) -> dict[str, Any]:
    """{"proteins": n, "features": n, "by_type": {feature type: n, most frequent first}}."""
    proteins = db.execute("select count(*) from proteins").fetchone()[0]
    by_type = {row[0]: row[1] for row in db.execute(
        "select type, count(*) as n from features group by type order by n desc, type")}
    return {"proteins": proteins, "features": sum(by_type.values()), "by_type": by_type}
