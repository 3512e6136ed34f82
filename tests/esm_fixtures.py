"""Shared by the ESM-2 tests: a tiny fair-esm checkpoint, real Swiss-Prot sequences, protein rows."""

from __future__ import annotations

import gzip
from pathlib import Path

from sae.plm import make_random_esm2, save_esm2_checkpoint
from storage.workspace import Workspace

TINY = {"num_layers": 2, "embed_dim": 32, "attention_heads": 4}


def tiny_checkpoint(folder: Path, name: str = "tiny_esm2.pt", *, regression: bool = True,
                    seed: int = 0, **shape: int) -> Path:
    """A randomly initialised ESM-2 (2 layers x 32 dims unless told) saved in fair-esm's release layout."""
    model, _ = make_random_esm2(**{**TINY, **shape}, seed=seed)
    return save_esm2_checkpoint(model, Path(folder) / name, regression=regression)


def read_sprot_sequences(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(primary accession, sequence) from a UniProt flat file, in file order; just the AC and SQ lines."""
    entries: list[tuple[str, str]] = []
    accession, residues, in_sequence = None, [], False
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith("AC   ") and accession is None:
                accession = line[5:].split(";")[0].strip()
            elif line.startswith("SQ   "):
                in_sequence = True
            elif line.startswith("//"):
                entries.append((accession, "".join(residues)))
                if limit is not None and len(entries) >= limit:
                    break
                accession, residues, in_sequence = None, [], False
            elif in_sequence:
                residues.append(line.replace(" ", "").strip())
    return entries


def insert_proteins(workspace: Workspace, items: list[tuple[str, str]]) -> None:
    """Put bare protein rows (accession, sequence, length) into the workspace database."""
    with workspace.db() as db, db.transaction():
        db.table("proteins").upsert_all(
            [{"accession": acc, "sequence": seq, "length": len(seq)} for acc, seq in items], pk="accession"
        )
