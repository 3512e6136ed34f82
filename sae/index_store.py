"""The on-disk layout of an activation index, `index/<sae_id>/`, and its reader.

    manifest.json             what was indexed: SAE id and weights hash, sizes, seed, counts, index hash
    accessions.npy            bytes [N]       indexed proteins, in index order (protein id = row)
    lengths.npy               int32 [N]
    feature_max.npy           float32 [F]     max activation over the index (0 = dead feature)
    n_fire_proteins.npy       int64 [F]       proteins where the feature is > 0 somewhere
    n_fire_residues.npy       int64 [F]       residues where it is > 0
    quantiles.npy             float32 [F, Q]  edges of the non-zero per-protein maxima
    maxima_indptr.npy         int64 [F + 1]   CSR by feature of the non-zero per-protein maxima:
    maxima_protein.npy        int32 [nnz]       protein ids, ascending within a feature
    maxima_value.npy          float32 [nnz]     raw per-protein max
    maxima_residue.npy        uint16 [nnz]      0-based residue of that max
    examples_protein.npy      int32 [F, S]    per feature: example slots, then the test half of the
                                              held-out slots ("heldout"), then the validation half (-1 pad)
    examples_kind.npy         int8 [F, S]     KIND_* below
    examples_value.npy        float32 [F, S]  raw per-protein max of that slot's protein
    residues_indptr.npy       int64 [F*S + 1] per (feature, slot): its firing residues, in
    residues_position.npy     uint16 [M]        0-based positions, ascending
    residues_value.npy        float16 [M]       raw activations

Every array is a plain .npy file that readers memory-map, so reading one feature touches only its
rows. The builder writes the large arrays with positional writes (never through a memory map) so its
resident memory stays flat however large they grow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import InputError, NotFoundError

FORMAT_VERSION = 2  # 2: held-out split into a test half ("heldout") and a validation half
READABLE_VERSIONS = (1, 2)  # format 1 has no validation half; the agent refuses it (rerun `plmlabel index`)
MANIFEST = "manifest.json"

KIND_TOP, KIND_QUANTILE, KIND_SILENT, KIND_HELDOUT, KIND_VALIDATION = 0, 1, 2, 3, 4
KIND_NAMES = {KIND_TOP: "top", KIND_QUANTILE: "quantile", KIND_SILENT: "silent", KIND_HELDOUT: "heldout",
              KIND_VALIDATION: "validation"}
N_BINS = 10  # 0.1-wide bins of normalised per-protein max activation
QUANTILE_LEVELS = tuple(round(q / 10, 1) for q in range(11))  # deciles, 0 and 1 included
MAX_POSITION = np.iinfo(np.uint16).max


# --- writing -----------------------------------------------------------------------------------------


class Spill:
    """Append-only columns on disk (raw binary, one file per column) for data too large to hold."""

    def __init__(self, directory: Path, name: str, dtypes: dict[str, np.dtype]) -> None:
        self.dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        self.paths = {k: Path(directory) / f"{name}.{k}.bin" for k in self.dtypes}
        self._handles = {k: open(p, "wb") for k, p in self.paths.items()}  # noqa: SIM115 - closed by close()
        self.size = 0

    def append(self, **columns: np.ndarray) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1 or set(columns) != set(self.dtypes):
            raise ValueError("append needs every column, all of one length")
        for key, values in columns.items():
            np.ascontiguousarray(values, dtype=self.dtypes[key]).tofile(self._handles[key])
        self.size += lengths.pop()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        dtype = self.dtypes[key]
        with open(self.paths[key], "rb") as handle:
            handle.seek(start * dtype.itemsize)
            return np.fromfile(handle, dtype=dtype, count=stop - start)

    def remove(self) -> None:
        self.close()
        for path in self.paths.values():
            path.unlink(missing_ok=True)


def create_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Create an .npy file of `shape` (zero-filled, sparse on disk); returns its data offset."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        offset = handle.tell()
        handle.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return offset


def bucket_sort(spill: Spill, key: str, counts: np.ndarray, outputs: dict[str, Path],
                chunk: int = 1 << 22, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Write the spill's columns grouped by `key` (stable: spill order within a key) into .npy files.

    `counts[k]` is how many rows carry key k. Returns the CSR indptr (int64 [len(counts) + 1]).
    Reads `chunk` rows at a time and writes each key's run with one positional write, so memory
    is bounded by the chunk, not by the spill.
    """
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if indptr[-1] != spill.size:
        raise ValueError(f"counts sum to {indptr[-1]}, the spill holds {spill.size} rows")
    columns = [c for c in outputs if c != key]
    fds, offsets = {}, {}
    for column in columns:
        offsets[column] = create_npy(outputs[column], spill.dtypes[column], (spill.size,))
        fds[column] = os.open(outputs[column], os.O_WRONLY)
    cursor = indptr[:-1].copy()
    try:
        for start in range(0, spill.size, chunk):
            stop = min(start + chunk, spill.size)
            keys = spill.read(key, start, stop)
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            run_starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            run_keys = keys[run_starts]
            run_ends = np.r_[run_starts[1:], len(keys)]
            for column in columns:
                values = spill.read(column, start, stop)[order]
                itemsize = values.dtype.itemsize
                for k, s, e in zip(run_keys.tolist(), run_starts.tolist(), run_ends.tolist(), strict=True):
                    os.pwrite(fds[column], values[s:e].tobytes(),
                              offsets[column] + int(cursor[k]) * itemsize)
            cursor[run_keys] += run_ends - run_starts
            if progress:
                progress(stop - start)
    finally:
        for fd in fds.values():
            os.close(fd)
    return indptr


def save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array))


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


# --- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureIndexStats:
    feature: int
    max_activation: float
    n_proteins: int  # proteins where the feature fires
    n_residues: int  # residues where it fires
    frac_proteins: float
    frac_residues: float
    quantiles: tuple[float, ...]


@dataclass(frozen=True)
class Slot:
    """One example or held-out protein of a feature."""

    slot: int
    protein: int  # protein id in the index
    accession: str
    kind: str  # "top", "quantile", "silent" or "heldout"
    max_activation: float


class IndexReader:
    """Read one index folder lazily: each call touches only the rows it needs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise NotFoundError(f"no activation index at {self.path}; run `plmlabel index` first.")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if self.manifest.get("format_version") not in READABLE_VERSIONS:
            raise InputError(f"the index at {self.path} has format version "
                             f"{self.manifest.get('format_version')}; rebuild it with `plmlabel index`.")
        self._arrays: dict[str, np.ndarray] = {}

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    # --- manifest ------------------------------------------------------------------------------------
    @property
    def sae_id(self) -> str:
        return self.manifest["sae_id"]

    @property
    def d_sae(self) -> int:
        return int(self.manifest["d_sae"])

    @property
    def n_proteins(self) -> int:
        return int(self.manifest["n_proteins"])

    @property
    def n_residues(self) -> int:
        return int(self.manifest["n_residues"])

    @property
    def weights_hash(self) -> str:
        return self.manifest["weights_hash"]

    @property
    def has_validation(self) -> bool:
        """Whether the held-out proteins come split into test and validation halves (format 2)."""
        return int(self.manifest.get("format_version", 1)) >= 2

    @property
    def index_hash(self) -> str:
        return self.manifest["index_hash"]

    def check_weights(self, current_hash: str) -> None:
        """InputError if the SAE's weights changed since this index was built."""
        if current_hash != self.weights_hash:
            raise InputError(
                f"the index of SAE {self.sae_id!r} was built from other weights than its current file; "
                f"rebuild with `plmlabel index {self.sae_id}`."
            )

    def check_feature(self, feature: int) -> int:
        if not 0 <= feature < self.d_sae:
            raise InputError(f"feature {feature} is out of range: SAE {self.sae_id!r} has {self.d_sae} "
                             f"features (0-{self.d_sae - 1}).")
        return int(feature)

    # --- proteins --------------------------------------------------------------------------------------
    def accession(self, protein: int) -> str:
        return bytes(self._array("accessions")[protein]).decode()

    def accessions(self, proteins: np.ndarray | list[int] | None = None) -> list[str]:
        array = self._array("accessions")
        rows = array if proteins is None else array[np.asarray(proteins, dtype=np.int64)]
        return [bytes(a).decode() for a in rows]

    def length(self, protein: int) -> int:
        return int(self._array("lengths")[protein])

    # --- features ----------------------------------------------------------------------------------------
    def feature_stats(self, feature: int) -> FeatureIndexStats:
        f = self.check_feature(feature)
        n_proteins = int(self._array("n_fire_proteins")[f])
        n_residues = int(self._array("n_fire_residues")[f])
        return FeatureIndexStats(
            feature=f,
            max_activation=float(self._array("feature_max")[f]),
            n_proteins=n_proteins,
            n_residues=n_residues,
            frac_proteins=n_proteins / max(self.n_proteins, 1),
            frac_residues=n_residues / max(self.n_residues, 1),
            quantiles=tuple(float(q) for q in self._array("quantiles")[f]),
        )

    def all_stats(self) -> dict[str, np.ndarray]:
        """Whole per-feature arrays (small: F rows each)."""
        return {name: np.asarray(self._array(name))
                for name in ("feature_max", "n_fire_proteins", "n_fire_residues", "quantiles")}

    def protein_maxima(self, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(protein ids, raw per-protein max, 0-based residue of the max) where the feature fires."""
        f = self.check_feature(feature)
        indptr = self._array("maxima_indptr")
        s, e = int(indptr[f]), int(indptr[f + 1])
        return (np.array(self._array("maxima_protein")[s:e]), np.array(self._array("maxima_value")[s:e]),
                np.array(self._array("maxima_residue")[s:e]))

    def slots(self, feature: int) -> list[Slot]:
        """Example slots (top, quantile, silent), then the test half, then the validation half."""
        f = self.check_feature(feature)
        proteins = np.array(self._array("examples_protein")[f])
        kinds = np.array(self._array("examples_kind")[f])
        values = np.array(self._array("examples_value")[f])
        used = np.flatnonzero(proteins >= 0)
        accessions = self.accessions(proteins[used])
        return [Slot(int(i), int(proteins[i]), acc, KIND_NAMES[int(kinds[i])], float(values[i]))
                for i, acc in zip(used.tolist(), accessions, strict=True)]

    def examples(self, feature: int) -> list[Slot]:
        return [s for s in self.slots(feature) if s.kind not in ("heldout", "validation")]

    def heldout(self, feature: int) -> list[Slot]:
        """The test half of the held-out proteins (what a label is scored on)."""
        return [s for s in self.slots(feature) if s.kind == "heldout"]

    def validation(self, feature: int) -> list[Slot]:
        """The validation half (empty in a format-1 index)."""
        return [s for s in self.slots(feature) if s.kind == "validation"]

    def residue_activations(self, feature: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(0-based positions, raw float32 activations) of the residues where the feature fires."""
        f = self.check_feature(feature)
        n_slots = self._array("examples_protein").shape[1]
        if not 0 <= slot < n_slots:
            raise InputError(f"slot {slot} is out of range (0-{n_slots - 1}).")
        indptr = self._array("residues_indptr")
        key = f * n_slots + slot
        s, e = int(indptr[key]), int(indptr[key + 1])
        return (np.array(self._array("residues_position")[s:e], dtype=np.int64),
                np.array(self._array("residues_value")[s:e], dtype=np.float32))

    def residue_vector(self, feature: int, slot: Slot | int) -> np.ndarray:
        """Dense raw activations [L] of one slot's protein (zeros where silent)."""
        slot = slot if isinstance(slot, Slot) else next(s for s in self.slots(feature) if s.slot == slot)
        positions, values = self.residue_activations(feature, slot.slot)
        dense = np.zeros(self.length(slot.protein), dtype=np.float32)
        dense[positions] = values
        return dense
