"""`plmlabel embed --sample-residues N|FRACTION`: keep a uniform random sample of residue embeddings.

Training an SAE needs a few million residues, not a copy of every residue of Swiss-Prot. Every residue
gets a random key from a generator seeded by (seed, accession), so its key does not depend on the order
in which proteins are embedded, on the block size or on which Ray worker embedded it; the sample is the
N residues with the smallest keys (a bottom-N sample: uniform over all residues, without replacement).
`ResidueReservoir` keeps at most about 1.25 N candidate rows at a time, so memory is N x d_model x 2
bytes (fp16) plus one block of proteins, whatever the number of proteins.

The sample is written as an ordinary EmbeddingStore (sae/embeddings.py: shards of (accession, rows)),
so `sae train` reads it as it reads a full store: each protein holds only its sampled residues, in
position order (`shard_NNNNN.positions.npy` says which), and the protein-level held-out split of
training still applies. The manifest says `sample_residues`, so `index` and `concepts` never mistake it
for a full store (they take their embeddings from the model instead). The whole sample is written into
a temporary folder and moved into place at the end: an interrupted run leaves the old folder as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sae.embeddings import FORMAT_VERSION, EmbeddingStore, _atomic_write_bytes
from storage.errors import InputError

POSITIONS_SUFFIX = ".positions.npy"


def parse_sample_size(text: str | float | int) -> int | float:
    """'50000' -> 50000 residues; '0.05' -> 5% of the residues. InputError names the flag otherwise."""
    value = str(text).strip()
    try:
        if value.isdigit():
            number: int | float = int(value)
            if number >= 1:
                return number
        else:
            number = float(value)
            if 0 < number < 1:
                return number
    except ValueError:
        pass
    raise InputError(f"--sample-residues takes a count of residues (1 or more) or a fraction in (0, 1), "
                     f"not {value!r}.")


def sample_count(size: int | float, total: int) -> int:
    """Residues to keep out of `total`: a count (at most all of them) or a fraction (at least one)."""
    if isinstance(size, float):
        return max(1, min(total, math.ceil(size * total)))
    return min(int(size), total)


def residue_keys(seed: int, accession: str, length: int) -> np.ndarray:
    """The random keys of a protein's residues: fixed by (seed, accession), whatever the order of work."""
    digest = int.from_bytes(hashlib.sha256(accession.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, digest]).random(length)


class ResidueReservoir:
    """The `n` residues with the smallest keys among all added so far (a uniform sample of them)."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("a sample needs at least one residue")
        self.n, self.seed = n, seed
        self.threshold = np.inf  # the n-th smallest key so far, once n residues were seen
        self.n_seen = 0
        self._accessions: list[str] = []
        self._keys: list[np.ndarray] = []
        self._protein: list[np.ndarray] = []
        self._position: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._held = 0

    def add(self, accession: str, rows: np.ndarray) -> None:
        keys = residue_keys(self.seed, accession, len(rows))
        self.n_seen += len(rows)
        keep = np.flatnonzero(keys < self.threshold)
        if not len(keep):
            return
        self._accessions.append(accession)
        self._keys.append(keys[keep])
        self._protein.append(np.full(len(keep), len(self._accessions) - 1, dtype=np.int64))
        self._position.append(keep.astype(np.int32))
        self._rows.append(np.asarray(rows[keep], dtype=np.float16))
        self._held += len(keep)
        if self._held > self.n + max(self.n // 4, 4096):
            self._compact()

    def _compact(self) -> None:
        keys = np.concatenate(self._keys)
        order = np.argpartition(keys, self.n - 1)[: self.n] if len(keys) > self.n else np.arange(len(keys))
        self._keys = [keys[order]]
        self._protein = [np.concatenate(self._protein)[order]]
        self._position = [np.concatenate(self._position)[order]]
        self._rows = [np.concatenate(self._rows)[order]]
        self._held = len(order)
        if len(order) == self.n:
            self.threshold = float(self._keys[0].max())

    def extend(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        for accession, rows in items:
            self.add(accession, rows)

    def result(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(accession, positions ascending, fp16 rows) per sampled protein, by accession."""
        if not self._keys:
            return []
        self._compact()
        protein, position, rows = self._protein[0], self._position[0], self._rows[0]
        names = np.array(self._accessions, dtype=object)[protein]
        order = np.lexsort((position, names.astype(str)))
        out: list[tuple[str, np.ndarray, np.ndarray]] = []
        names, position, rows = names[order], position[order], rows[order]
        starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
        for start, stop in zip(starts, [*starts[1:], len(names)], strict=True):
            out.append((str(names[start]), position[start:stop], rows[start:stop]))
        return out


def write_sample_store(path: Path, sample: list[tuple[str, np.ndarray, np.ndarray]], *, model: str,
                       layer: int, d_model: int, shard_rows: int, info: dict) -> EmbeddingStore:
    """Write the sample as an EmbeddingStore at `path`, replacing what was there once it is complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.sample-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = {"model": model, "layer": layer, "d_model": d_model, "dtype": "float16",
                    "format_version": FORMAT_VERSION, **info}
        _atomic_write_bytes(tmp / "manifest.json", lambda h: h.write(json.dumps(manifest).encode()))
        store = EmbeddingStore(tmp)
        shard: list[tuple[str, np.ndarray, np.ndarray]] = []
        size = number = 0
        for item in sample:
            if shard and size + len(item[1]) > shard_rows:
                _write_shard(store, number, shard)
                shard, size, number = [], 0, number + 1
            shard.append(item)
            size += len(item[1])
        if shard:
            _write_shard(store, number, shard)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EmbeddingStore(path)


def _write_shard(store: EmbeddingStore, number: int, shard: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    positions = np.concatenate([p for _, p, _ in shard]).astype(np.int32)
    _atomic_write_bytes(store.path / f"shard_{number:05d}{POSITIONS_SUFFIX}", lambda h: np.save(h, positions))
    store.write_shard(number, [(accession, rows) for accession, _, rows in shard])  # its .json last


def _swap_in(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    keep = [entry for entry in (path.iterdir() if path.exists() else []) if entry.name == ".lock"]
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    for entry in keep:  # the lock file the running embed holds moves with it
        os.replace(old / entry.name, path / entry.name)
    shutil.rmtree(old, ignore_errors=True)


def read_positions(store: EmbeddingStore, number: int) -> np.ndarray:
    """The residue positions (0-based) of a sample shard's rows, in row order."""
    return np.load(store.path / f"shard_{number:05d}{POSITIONS_SUFFIX}")


# --- the job (`embed_proteins` with `sample_residues`) ----------------------------------------------------


def sample_proteins(workspace, path: Path, engine, model_key: str, sequences: dict[str, str],
                    size: int | float, seed: int, block_residues: int | None, progress, started: float):
    """Embed every protein of `sequences` block by block and keep a uniform sample of their residues."""
    import time

    from sae.embed import EmbedSummary, default_shard_residues, plan_shards
    from sae.plm import ESM2_MODELS
    from sae.plm_keys import same_plm_model
    from storage.lock import workspace_lock

    if isinstance(size, bool) or not (isinstance(size, int) and size >= 1 or isinstance(size, float)
                                      and 0 < size < 1):
        raise InputError(f"--sample-residues takes a count (1 or more) or a fraction in (0, 1), "
                         f"not {size!r}.")
    with workspace_lock(path / ".lock", f"embed --sample-residues {engine.model} layer {engine.layer}"):
        store = EmbeddingStore(path)
        if store.exists and not store.manifest.get("sample_residues") and store.shard_numbers():
            raise InputError(f"{path} holds the embeddings of every residue already (`sae train` reads "
                             "them); delete that folder to keep a sample instead.")
        if store.exists and not same_plm_model(store.manifest.get("model"), model_key, workspace.root):
            raise InputError(f"{path} holds embeddings of {store.manifest.get('model')}, not {model_key}; "
                             "delete that folder or use the same model.")
        total = sum(map(len, sequences.values()))
        n = sample_count(size, total)
        engine.start()
        spec = ESM2_MODELS.get(engine.model)
        width = engine.embed_dim or (spec.embed_dim if spec else 1280)
        blocks = plan_shards(sequences, block_residues or default_shard_residues(width))
        reservoir = ResidueReservoir(n, seed)
        done = [0]

        def tick(count: int) -> None:
            done[0] += count
            if progress:
                progress(done[0], total)

        if progress:
            progress(0, total)
        items = ([(acc, sequences[acc]) for acc in block.accessions] for block in blocks)
        for block in engine.blocks(items, tick):
            reservoir.extend(block)
        d_model = engine.embed_dim or width
        sample = reservoir.result()
        info = {"sample_residues": n, "sample_seed": seed, "sample_of_residues": total,
                "sample_of_proteins": len(sequences)}
        store = write_sample_store(path, sample, model=model_key, layer=engine.layer, d_model=d_model,
                                   shard_rows=default_shard_residues(d_model), info=info)
        (path / "plan.json").unlink(missing_ok=True)  # a sample has no shard plan to resume
        return EmbedSummary(
            model=model_key, layer=engine.layer, path=str(path), n_proteins=len(sequences), n_residues=total,
            n_shards=len(store.shard_numbers()), n_skipped_shards=0,
            seconds=round(time.monotonic() - started, 3), device=engine.used_device, dtype=engine.used_dtype,
            workers=engine.workers if engine.ray is not None else 1, n_sampled=n, seed=seed,
        )
