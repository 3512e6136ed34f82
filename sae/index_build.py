"""Build an activation index folder from embeddings and an encoder (no database, no SAE files).

Three streaming passes, memory bounded by one chunk of activations plus per-feature arrays:

1. every protein: encode in chunks; per-protein max and its residue for each feature that fires,
   spilled to disk (COO, protein order); per-feature firing counts and maxima accumulate.
   The spill is then grouped by feature (`bucket_sort`) into CSR arrays.
2. every feature: read its CSR row, compute quantiles, select examples and held-out proteins.
3. only the selected proteins: encode again and keep, for each (feature, slot) it was chosen for,
   the residues where that feature fires (fp16), spilled then grouped by (feature, slot).

The caller supplies `source(accessions)`, which yields (accession, embeddings [L, d_in]) for those
accessions (all when None) in a fixed order, so pass 3 can stream again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sae.activations import DEFAULT_MAX_ELEMENTS, Chunk, Encoder, encode_chunks
from sae.index_select import ExampleSizes, select
from sae.index_store import (
    FORMAT_VERSION,
    MAX_POSITION,
    QUANTILE_LEVELS,
    Spill,
    bucket_sort,
    save_npy,
    write_manifest,
)
from storage.errors import InputError

Source = Callable[[set[str] | None], Iterable[tuple[str, np.ndarray]]]
Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): `done` of `total` units of `stage` are finished (cumulative)."""

FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)


def write_index(directory: Path, source: Source, encode: Encoder, *, d_sae: int, n_residues_hint: int,
                sizes: ExampleSizes, seed: int, manifest_extra: dict[str, Any] | None = None,
                max_elements: int = DEFAULT_MAX_ELEMENTS, progress: Progress | None = None,
                maxima: Iterable[Maxima] | None = None) -> dict[str, Any]:
    """Write a complete index into `directory` (which must be empty) and return its manifest.

    `n_residues_hint` only sizes the progress bar. `maxima`: pass 1's per-protein maxima, computed
    elsewhere (block by block, or by Ray workers); by default `iter_maxima` over `source(None)`.
    Its proteins must be unique and in the order `source` yields them.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    done: dict[str, int] = {}

    def tick(stage: str, advance: int, total: int) -> None:
        if progress:
            done[stage] = done.get(stage, 0) + advance
            progress(stage, done[stage], total)

    # --- pass 1: per-protein maxima -------------------------------------------------------------------
    spill = Spill(directory, "maxima", {"feature": np.int32, "protein": np.int32, "value": np.float32,
                                        "residue": np.uint16})
    accessions: list[str] = []
    lengths: list[int] = []
    feature_max = np.zeros(d_sae, dtype=np.float32)
    n_fire_proteins = np.zeros(d_sae, dtype=np.int64)
    n_fire_residues = np.zeros(d_sae, dtype=np.int64)
    seen: set[str] = set()
    if maxima is None:
        maxima = iter_maxima(_unique(source(None), seen), encode, d_sae, max_elements)
    try:
        for part in maxima:
            for accession, length in zip(part.accessions, part.lengths.tolist(), strict=True):
                if length > MAX_POSITION:
                    raise InputError(f"{accession} has {length} residues; the index holds at most "
                                     f"{MAX_POSITION}.")
                if length == 0:
                    raise InputError(f"the embedding of {accession} is empty.")
            first = len(accessions)
            accessions.extend(part.accessions)
            lengths.extend(part.lengths.tolist())
            spill.append(feature=part.feature, protein=part.protein + first, value=part.value,
                         residue=part.residue)
            n_fire_residues += part.n_fire_residues
            n_fire_proteins += np.bincount(part.feature, minlength=d_sae)
            np.maximum.at(feature_max, part.feature, part.value)
            tick("activations", int(part.lengths.sum()), n_residues_hint)
        spill.close()
        if not accessions:
            raise InputError("no proteins to index: the embeddings hold none of the requested proteins.")
        maxima_names = {c: directory / f"maxima_{c}.npy" for c in ("feature", "protein", "value", "residue")}
        indptr = bucket_sort(spill, "feature", n_fire_proteins, maxima_names,
                             progress=lambda n: tick("grouping", n, spill.size))
    finally:
        spill.remove()
    save_npy(directory / "maxima_indptr.npy", indptr)
    n_proteins = len(accessions)
    n_residues = int(np.sum(lengths, dtype=np.int64))
    width = max(len(a.encode()) for a in accessions)
    save_npy(directory / "accessions.npy", np.array([a.encode() for a in accessions], dtype=f"S{width}"))
    save_npy(directory / "lengths.npy", np.asarray(lengths, dtype=np.int32))
    del lengths

    # --- pass 2: statistics and example sets, one feature at a time --------------------------------------
    n_slots = sizes.n_slots
    slot_protein = np.full((d_sae, n_slots), -1, dtype=np.int32)
    slot_kind = np.full((d_sae, n_slots), -1, dtype=np.int8)
    slot_value = np.zeros((d_sae, n_slots), dtype=np.float32)
    quantiles = np.zeros((d_sae, len(QUANTILE_LEVELS)), dtype=np.float32)
    maxima_protein = np.load(maxima_names["protein"], mmap_mode="r")
    maxima_value = np.load(maxima_names["value"], mmap_mode="r")
    for feature in range(d_sae):
        s, e = int(indptr[feature]), int(indptr[feature + 1])
        proteins = _read_rows(maxima_names["protein"], maxima_protein, s, e)
        values = _read_rows(maxima_names["value"], maxima_value, s, e)
        if len(values):
            quantiles[feature] = np.quantile(values, QUANTILE_LEVELS)
        chosen = select(proteins, values, n_proteins, sizes, np.random.default_rng([seed, feature]))
        n = len(chosen.proteins)
        slot_protein[feature, :n] = chosen.proteins
        slot_kind[feature, :n] = chosen.kinds
        slot_value[feature, :n] = chosen.values
        tick("examples", 1, d_sae)
    del maxima_protein, maxima_value
    for name, array in (("feature_max", feature_max), ("n_fire_proteins", n_fire_proteins),
                        ("n_fire_residues", n_fire_residues), ("quantiles", quantiles),
                        ("examples_protein", slot_protein), ("examples_kind", slot_kind),
                        ("examples_value", slot_value)):
        save_npy(directory / f"{name}.npy", array)

    # --- pass 3: residue activations of the selected proteins ----------------------------------------------
    flat = slot_protein.ravel()
    used = np.flatnonzero(flat >= 0)
    by_protein = used[np.argsort(flat[used], kind="stable")]  # flat slot keys, grouped by protein
    key_proteins = flat[by_protein]
    wanted = np.unique(key_proteins)
    wanted_accessions = {accessions[p]: int(p) for p in wanted}
    residue_spill = Spill(directory, "residues", {"key": np.int64, "position": np.uint16,
                                                  "value": np.float16})
    key_counts = np.zeros(d_sae * n_slots, dtype=np.int64)
    seen = set()
    try:
        items = _unique(source(set(wanted_accessions)), seen)
        for chunk in encode_chunks(items, encode, d_sae, max_elements):
            for accession, protein_acts in chunk:
                protein = wanted_accessions.get(accession)
                if protein is None:
                    continue
                lo, hi = np.searchsorted(key_proteins, [protein, protein + 1])
                keys = by_protein[lo:hi]
                features = keys // n_slots
                sub = protein_acts[:, features]  # [L, k]
                columns, positions = np.nonzero(sub.T > 0)  # grouped by key, positions ascending
                key_of = keys[columns]
                values = sub[positions, columns]
                residue_spill.append(key=key_of, position=positions,
                                     value=np.clip(values, FP16_TINY, FP16_MAX))
                np.add.at(key_counts, key_of, 1)
                tick("example residues", 1, len(wanted))
        residue_spill.close()
        missing = len(wanted_accessions) - len(seen)
        if missing:
            raise InputError(f"{missing} selected proteins vanished from the embeddings while indexing; "
                             "run `plmlabel index` again.")
        residue_names = {c: directory / f"residues_{c}.npy" for c in ("key", "position", "value")}
        residue_indptr = bucket_sort(residue_spill, "key", key_counts, residue_names)
    finally:
        residue_spill.remove()
    save_npy(directory / "residues_indptr.npy", residue_indptr)

    manifest = {
        "format_version": FORMAT_VERSION,
        "d_sae": d_sae,
        "n_proteins": n_proteins,
        "n_residues": n_residues,
        "nnz": int(indptr[-1]),
        "n_dead": int((n_fire_proteins == 0).sum()),
        "seed": seed,
        "sizes": asdict(sizes),
        "n_slots": n_slots,
        "quantile_levels": list(QUANTILE_LEVELS),
        **(manifest_extra or {}),
    }
    manifest["index_hash"] = _index_hash(directory, manifest)
    write_manifest(directory, manifest)
    return manifest


@dataclass
class Maxima:
    """Pass 1 over consecutive proteins: each protein's max per firing feature (sparse), and counts.

    `protein` indexes `accessions` (0-based within this part). Small enough to send between processes.
    """

    accessions: list[str]
    lengths: np.ndarray  # int32 [n]
    feature: np.ndarray  # int32 [nnz]
    protein: np.ndarray  # int32 [nnz]
    value: np.ndarray  # float32 [nnz], > 0
    residue: np.ndarray  # uint16 [nnz], 0-based position of the max
    n_fire_residues: np.ndarray  # int64 [d_sae]: residues where each feature fires


def chunk_maxima(chunk: Chunk, d_sae: int) -> Maxima:
    """Per-protein maxima of one chunk of activations."""
    acts = chunk.activations
    columns = np.arange(d_sae)
    features, proteins, values, residues = [], [], [], []
    for p in range(len(chunk.accessions)):
        protein_acts = acts[chunk.offsets[p]:chunk.offsets[p + 1]]
        if not len(protein_acts):
            continue  # refused by the caller, with the protein's name
        residue = protein_acts.argmax(axis=0)
        value = protein_acts[residue, columns]
        fires = np.flatnonzero(value > 0)
        features.append(fires.astype(np.int32))
        proteins.append(np.full(len(fires), p, dtype=np.int32))
        values.append(value[fires])
        residues.append(residue[fires].astype(np.uint16))

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    return Maxima(accessions=list(chunk.accessions), lengths=np.diff(chunk.offsets).astype(np.int32),
                  feature=cat(features, np.int32), protein=cat(proteins, np.int32),
                  value=cat(values, np.float32), residue=cat(residues, np.uint16),
                  n_fire_residues=np.count_nonzero(acts > 0, axis=0).astype(np.int64))


def iter_maxima(items: Iterable[tuple[str, np.ndarray]], encode: Encoder, d_sae: int,
                max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[Maxima]:
    """Pass 1 over (accession, embeddings) pairs, one Maxima per chunk of activations."""
    for chunk in encode_chunks(items, encode, d_sae, max_elements):
        yield chunk_maxima(chunk, d_sae)


def merge_maxima(parts: Iterable[Maxima], d_sae: int) -> Maxima:
    """One Maxima for consecutive parts (what a Ray worker returns for its block)."""
    parts = list(parts)
    firsts = np.cumsum([0] + [len(p.accessions) for p in parts[:-1]])
    return Maxima(
        accessions=[a for p in parts for a in p.accessions],
        lengths=np.concatenate([p.lengths for p in parts] or [np.zeros(0, np.int32)]),
        feature=np.concatenate([p.feature for p in parts] or [np.zeros(0, np.int32)]),
        protein=np.concatenate([p.protein + f for p, f in zip(parts, firsts, strict=True)]
                               or [np.zeros(0, np.int32)]).astype(np.int32),
        value=np.concatenate([p.value for p in parts] or [np.zeros(0, np.float32)]),
        residue=np.concatenate([p.residue for p in parts] or [np.zeros(0, np.uint16)]),
        n_fire_residues=sum((p.n_fire_residues for p in parts), np.zeros(d_sae, dtype=np.int64)),
    )


def _unique(items: Iterable[tuple[str, np.ndarray]], seen: set[str]) -> Iterable[tuple[str, np.ndarray]]:
    """Each accession once (the first occurrence), recording what was yielded in `seen`."""
    for accession, embedding in items:
        if accession not in seen:
            seen.add(accession)
            yield accession, embedding


def _read_rows(path: Path, array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of an .npy file, read with a plain file read (keeps resident memory flat)."""
    with open(path, "rb") as handle:
        handle.seek(array.offset + start * array.dtype.itemsize)
        return np.fromfile(handle, dtype=array.dtype, count=stop - start)


def _index_hash(directory: Path, manifest: dict[str, Any]) -> str:
    """sha256 over what the index says (manifest and example arrays): equal inputs, equal hash."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode())
    for name in ("accessions", "feature_max", "examples_protein", "examples_kind", "examples_value"):
        with open(directory / f"{name}.npy", "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def replace_directory(tmp: Path, target: Path) -> None:
    """Move a finished index into place, replacing an old one only once the new one is complete."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
