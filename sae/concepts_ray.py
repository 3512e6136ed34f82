"""`concepts --ray`: each block of proteins counted on a Ray worker (ESM-2, the SAE, the counts there).

The driver annotates each block's indexed proteins from the database (their concepts and their
valid/test split: small arrays), ships them with the block's sequences, and merges the sparse
integer counts each worker returns (sae/concepts.py `ConceptCounter.export`/`merge`). The blocks,
their chunks and so every activation are those of one process (sae/stream.py), and integer sums do
not depend on the order they are added in, so the report equals the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import InputError


def count_on_ray(opened: Any, stream: Any, sae: Any, sae_dir: Path, max_elements: int, scale: np.ndarray,
                 n_concepts: int, accessions: set[str],
                 annotate: Callable[[list[tuple[str, int]]], dict[str, Any]]) -> Iterator[tuple[dict, int]]:
    """(sparse counts, residues counted) per block, in block order, from `stream.workers` Ray tasks."""
    from sae.ray_pool import RayPool, concepts_task, sae_files

    source = opened.source
    if opened.kind != "model":
        raise InputError("concepts --ray takes its embeddings from the model; drop --from-store.")
    numbers = [n for n, block in enumerate(source.plan) if not accessions.isdisjoint(block)]
    with RayPool(stream.ray_address, stream.workers) as pool:
        stream.workers = pool.workers
        files = pool.put(sae_files(sae_dir))
        scale_ref = pool.put(np.asarray(scale, dtype=np.float32))
        residues: list[int] = []

        def calls() -> Iterator[tuple[Any, ...]]:
            for number in numbers:
                items = source.block_items(number)
                wanted = annotate([(a, len(s)) for a, s in items if a in accessions])
                residues.append(sum(len(s) for a, s in items if a in wanted))
                yield (opened.model, pool.device, opened.dtype, opened.layer, opened.max_tokens, files,
                       max_elements, scale_ref, n_concepts, items, wanted)

        for i, part in enumerate(pool.map(concepts_task, calls())):
            yield part, residues[i]
