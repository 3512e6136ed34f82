"""Stream SAE feature activations over stored embeddings, a bounded chunk of residues at a time.

Proteins are packed into chunks of at most `max_elements` activations (residues x features), so the
memory one chunk needs does not depend on how many proteins are streamed. A protein longer than a
chunk gets a chunk of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

Encoder = Callable[[np.ndarray], np.ndarray]
"""float32 embeddings [L, d_in] -> float32 activations [L, d_sae]."""

DEFAULT_MAX_ELEMENTS = 1 << 22  # 4M activations (16 MiB of float32) per chunk


@dataclass
class Chunk:
    """Activations of consecutive proteins, concatenated; protein i is rows offsets[i]:offsets[i+1]."""

    accessions: list[str]
    offsets: np.ndarray  # int64 [n + 1]
    activations: np.ndarray  # float32 [offsets[-1], d_sae]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, accession in enumerate(self.accessions):
            yield accession, self.activations[self.offsets[i]:self.offsets[i + 1]]


def encode_chunks(items: Iterable[tuple[str, np.ndarray]], encode: Encoder, d_sae: int,
                  max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[Chunk]:
    """Yield chunks of activations for (accession, embeddings [L, d_in]) pairs, in input order."""
    max_residues = max(1, max_elements // max(d_sae, 1))
    batch: list[tuple[str, np.ndarray]] = []
    n_residues = 0
    for accession, embedding in items:
        if batch and n_residues + len(embedding) > max_residues:
            yield _encode_batch(batch, encode, d_sae)
            batch, n_residues = [], 0
        batch.append((accession, embedding))
        n_residues += len(embedding)
    if batch:
        yield _encode_batch(batch, encode, d_sae)


def _encode_batch(batch: list[tuple[str, np.ndarray]], encode: Encoder, d_sae: int) -> Chunk:
    lengths = [len(e) for _, e in batch]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    stacked = np.concatenate([np.asarray(e, dtype=np.float32) for _, e in batch], axis=0)
    activations = np.asarray(encode(stacked), dtype=np.float32)
    if activations.shape != (len(stacked), d_sae):
        raise ValueError(f"encoder returned shape {activations.shape}, expected {(len(stacked), d_sae)}")
    return Chunk([a for a, _ in batch], offsets, activations)


def sae_encoder(sae) -> Encoder:
    """An Encoder over an `sae.model.SAE` (no autograd; CPU or the SAE's device)."""
    import torch

    def encode(embeddings: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(embeddings)).to(sae.device)
            return sae.encode(x).float().cpu().numpy()

    return encode


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def limit_heap_fragmentation(threshold: int = 4 << 20) -> bool:
    """Give every allocation of `threshold` bytes or more its own mapping (glibc only; else a no-op).

    glibc raises its mmap threshold each time a large block is freed, after which chunk-sized arrays
    come from the heap and the heap fragments: resident memory then creeps up with the number of
    chunks streamed, though nothing is kept. A fixed threshold returns each chunk's arrays to the
    system when freed, so peak memory stays flat in the residues indexed (bench/index.py measures it).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
