"""On-disk store of per-residue embeddings: `embeddings/<model>/layer_<L>/`.

Layout (all written atomically: a temp file renamed into place, the shard's index last, so a shard
whose `.json` exists is complete and a crash never leaves a half shard looking finished):

    manifest.json              {"model", "layer", "d_model", "dtype": "float16", "format_version"}
    shard_00000.npy            float16 [n_residues_in_shard, d_model], proteins concatenated
    shard_00000.json           {"accessions": [...], "offsets": [0, L1, L1+L2, ...]}  (len = n + 1)

Readers memory-map shards, so iterating over all proteins keeps memory flat in the store's size.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from storage.errors import InputError, NotFoundError

FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"^shard_(\d{5})\.json$")


def model_dirname(model: str) -> str:
    """A filesystem-safe folder name for a hub name or a checkpoint path."""
    name = Path(model).name if ("/" in model or model.endswith(".pt")) else model
    name = name.removesuffix(".pt")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def store_path(embeddings_dir: Path, model: str, layer: int) -> Path:
    return Path(embeddings_dir) / model_dirname(model) / f"layer_{layer}"


def _atomic_write_bytes(path: Path, writer) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        writer(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EmbeddingStore:
    """Read and append shards of per-residue embeddings for one (model, layer)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # --- writing ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, *, model: str, layer: int, d_model: int) -> EmbeddingStore:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"model": model, "layer": layer, "d_model": d_model, "dtype": "float16",
                    "format_version": FORMAT_VERSION}
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            existing = json.loads(manifest_path.read_text())
            if existing.get("d_model") != d_model:
                raise InputError(
                    f"{path} holds embeddings of width {existing.get('d_model')}, not {d_model}; "
                    "use another folder or delete it."
                )
        else:
            _atomic_write_bytes(manifest_path, lambda h: h.write(json.dumps(manifest).encode()))
        return cls(path)

    def write_shard(self, number: int, items: list[tuple[str, np.ndarray]]) -> None:
        """Write one shard of (accession, [L, d] array) pairs; complete when this returns."""
        if not items:
            raise ValueError("a shard needs at least one protein")
        arrays = [np.asarray(a, dtype=np.float16) for _, a in items]
        for (accession, _), array in zip(items, arrays, strict=True):
            if not np.isfinite(array).all():
                raise InputError(f"the embedding of {accession} contains NaN or infinite values.")
        offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).tolist()
        stem = self.path / f"shard_{number:05d}"
        data = np.concatenate(arrays, axis=0)
        _atomic_write_bytes(stem.with_suffix(".npy"), lambda h: np.save(h, data))
        index = {"accessions": [acc for acc, _ in items], "offsets": offsets}
        _atomic_write_bytes(stem.with_suffix(".json"), lambda h: h.write(json.dumps(index).encode()))

    # --- reading ----------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.path / "manifest.json").exists()

    def require(self) -> EmbeddingStore:
        if not self.exists:
            raise NotFoundError(f"no embeddings at {self.path}; run `plmlabel embed` first.")
        return self

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    def shard_numbers(self) -> list[int]:
        """Numbers of the complete shards, ascending."""
        numbers = []
        for entry in os.listdir(self.path) if self.path.exists() else []:
            match = _SHARD_RE.match(entry)
            if match and (self.path / f"shard_{match.group(1)}.npy").exists():
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def shard_index(self, number: int) -> dict:
        return json.loads((self.path / f"shard_{number:05d}.json").read_text())

    def shard_array(self, number: int) -> np.ndarray:
        return np.load(self.path / f"shard_{number:05d}.npy", mmap_mode="r")

    def accessions(self) -> list[str]:
        return [acc for n in self.shard_numbers() for acc in self.shard_index(n)["accessions"]]

    def n_residues(self) -> int:
        return sum(self.shard_index(n)["offsets"][-1] for n in self.shard_numbers())

    def iter_proteins(self, accessions: set[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (accession, float16 [L, d] memory-mapped view) shard by shard."""
        for number in self.shard_numbers():
            index = self.shard_index(number)
            array = self.shard_array(number)
            offsets = index["offsets"]
            for i, accession in enumerate(index["accessions"]):
                if accessions is None or accession in accessions:
                    yield accession, array[offsets[i]:offsets[i + 1]]

    def get(self, accession: str) -> np.ndarray:
        for number in self.shard_numbers():
            index = self.shard_index(number)
            if accession in index["accessions"]:
                i = index["accessions"].index(accession)
                return np.asarray(self.shard_array(number)[index["offsets"][i]:index["offsets"][i + 1]])
        raise NotFoundError(f"no embedding for {accession} in {self.path}.")
