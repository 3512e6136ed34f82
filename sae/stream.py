"""Where the index and concept passes get their embeddings: blocks of proteins, from a store or from ESM-2.

A pass consumes *blocks*: lists of (accession, float16 embeddings [L, d]) in a fixed order. Blocks
matter because the SAE encodes a bounded chunk of residues at a time and a float32 matmul's rows are
not bit-identical across chunk shapes; every pass restarts its chunks at a block boundary, so two
sources that yield the same blocks give bit-identical results, and a block is also the unit of work a
Ray worker gets (sae/ray_pool.py).

    StoreSource   one block per shard of an EmbeddingStore (the proteins wanted, in shard order)
    ModelSource   ESM-2 run on the fly: the proteins cut into blocks exactly as `plmlabel embed` cuts
                  them into shards (sorted by length then accession, `block_residues` a block), each
                  block embedded with one `embed_sequences` call and rounded to float16 as the store
                  rounds. An index from the model therefore equals one from a store embedded with the
                  same shard size, and memory holds one block, whatever the number of proteins.

Both are callables `source(subset)` yielding (accession, embedding) pairs (the `Source` the index
passes take); a ModelSource asked for a subset embeds only the blocks holding one of its proteins,
whole (the same batches as the first pass, so the same numbers), and yields the subset's proteins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from storage.errors import InputError, NotFoundError

Item = tuple[str, np.ndarray]
Block = list[Item]


class StoreSource:
    """The wanted proteins of an EmbeddingStore, one block per shard."""

    def __init__(self, store: Any, wanted: set[str]) -> None:
        self.store = store
        self.wanted = wanted

    def blocks(self, subset: set[str] | None = None) -> Iterator[Block]:
        chosen = self.wanted if subset is None else subset
        seen: set[str] = set()
        for number in self.store.shard_numbers():
            index = self.store.shard_index(number)
            array = self.store.shard_array(number)
            offsets = index["offsets"]
            block = []
            for i, accession in enumerate(index["accessions"]):
                if accession in chosen and accession not in seen:  # a store may hold a protein twice
                    seen.add(accession)
                    block.append((accession, array[offsets[i]:offsets[i + 1]]))
            if block:
                yield block

    def __call__(self, subset: set[str] | None = None) -> Iterator[Item]:
        for block in self.blocks(subset):
            yield from block


def plan_blocks(sequences: dict[str, str], block_residues: int) -> list[list[str]]:
    """Accessions cut into blocks as `plmlabel embed` cuts shards (sorted by length, then accession)."""
    from sae.embed import plan_shards

    return [shard.accessions for shard in plan_shards(sequences, block_residues)]


def embed_block(plm: Any, items: list[tuple[str, str]], layer: int, max_tokens: int) -> Block:
    """ESM-2 layer-`layer` embeddings of one block, float16 as the store keeps them, in block order."""
    from sae.plm import embed_sequences

    arrays = {acc: rows.astype(np.float16) for acc, rows in embed_sequences(plm, items, layer, max_tokens)}
    return [(accession, arrays[accession]) for accession, _ in items]


class ModelSource:
    """Embeddings computed by ESM-2 when a pass asks for them; nothing is written to disk.

    `load_plm()` is called once, at the first block (so a run that computes nothing loads nothing).
    """

    def __init__(self, load_plm: Callable[[], Any], sequences: dict[str, str], layer: int, *,
                 max_tokens: int, block_residues: int) -> None:
        self._load_plm = load_plm
        self._plm: Any = None
        self.sequences = sequences
        self.layer = layer
        self.max_tokens = max_tokens
        self.plan = plan_blocks(sequences, block_residues)

    @property
    def plm(self) -> Any:
        if self._plm is None:
            self._plm = self._load_plm()
        return self._plm

    def block_items(self, number: int) -> list[tuple[str, str]]:
        return [(accession, self.sequences[accession]) for accession in self.plan[number]]

    def n_residues(self, subset: set[str] | None = None) -> int:
        return sum(len(s) for a, s in self.sequences.items() if subset is None or a in subset)

    def blocks(self, subset: set[str] | None = None) -> Iterator[Block]:
        for number, accessions in enumerate(self.plan):
            if subset is not None and subset.isdisjoint(accessions):
                continue
            block = embed_block(self.plm, self.block_items(number), self.layer, self.max_tokens)
            yield block if subset is None else [item for item in block if item[0] in subset]

    def __call__(self, subset: set[str] | None = None) -> Iterator[Item]:
        for block in self.blocks(subset):
            yield from block


# --- choosing the source of a workspace ------------------------------------------------------------------


class StreamOptions(BaseModel):
    """Where `index` and `concepts` take their embeddings, and who computes them."""

    from_model: bool | None = None  # None: from ESM-2 when no full store of the SAE's layer exists
    ray: bool = False  # fan the blocks out over Ray workers (implies from_model)
    ray_address: str | None = None  # None with ray: a local Ray started for the run
    workers: int | None = None
    block_residues: int | None = None  # default: the store's shard size if one was planned, else embed's
    max_tokens: int | None = None  # default: [plm] max_tokens
    dtype: str | None = None  # default: [plm] dtype


class OpenSource(BaseModel):
    """A source picked for one run, with what the passes and the summary need."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str  # "store" or "model"
    source: Any  # StoreSource | ModelSource
    model: str
    layer: int
    n_residues: int
    n_skipped: int  # proteins with embeddings but no database row (store only)
    max_tokens: int = 0
    dtype: str = "auto"


def _full_store(store: Any) -> bool:
    return store.exists and bool(store.shard_numbers()) and not store.manifest.get("sample_residues")


def open_source(workspace: Any, record: Any, d_in: int, known: set[str], accessions: list[str] | None,
                options: StreamOptions, device: str) -> OpenSource:
    """The embeddings an SAE of width `d_in` reads: a store, or ESM-2 (checked before any compute)."""
    from sae.embed import _read_plan, default_shard_residues, load_sequences
    from sae.embeddings import EmbeddingStore, store_path
    from sae.plm import check_sequence

    config = workspace.load_config()
    model = record.plm_model or config.plm.model
    layer = record.layer if record.layer is not None else config.plm.layer
    store = EmbeddingStore(store_path(workspace.embeddings_dir, model, layer))
    from_model = options.from_model
    if options.ray:
        from_model = True
    if from_model is None:
        from_model = not _full_store(store)
    if not from_model:
        if not _full_store(store):
            raise NotFoundError(f"no embeddings of {model} layer {layer} yet; run `plmlabel embed` first "
                                "or index straight from the model with --from-model.")
        if store.d_model != d_in:
            raise InputError(
                f"SAE {record.sae_id!r} takes embeddings of width {d_in}, but the stored embeddings of "
                f"{model} layer {layer} have width {store.d_model}; embed with the SAE's model and layer."
            )
        wanted, n_skipped = select_stored(store, known, accessions)
        return OpenSource(kind="store", source=StoreSource(store, wanted), model=model, layer=layer,
                          n_residues=count_stored(store, wanted), n_skipped=n_skipped)

    width = model_width(model)
    if width is not None and width != d_in:
        raise InputError(f"SAE {record.sae_id!r} takes embeddings of width {d_in}, but {model} has width "
                         f"{width}; use the SAE's model.")
    with workspace.db() as db:
        sequences = load_sequences(db, accessions)
    sequences = {acc: check_sequence(acc, seq) for acc, seq in sequences.items()}
    max_tokens = options.max_tokens or config.plm.max_tokens
    dtype = options.dtype or config.plm.dtype
    plm_cell: list[Any] = []

    def load() -> Any:
        from sae.plm import load_esm

        if not plm_cell:
            plm = load_esm(model, device=device, dtype=dtype)
            if plm.embed_dim != d_in:
                raise InputError(f"SAE {record.sae_id!r} takes embeddings of width {d_in}, but {model} has "
                                 f"width {plm.embed_dim}; use the SAE's model.")
            if not 0 <= layer <= plm.num_layers:
                raise InputError(f"layer {layer} is out of range: {model} has layers 0..{plm.num_layers}.")
            plm_cell.append(plm)
        return plm_cell[0]

    if not options.ray or width is None:
        load()  # a missing checkpoint, a width mismatch or a bad layer fails before any compute
    plan = _read_plan(store.path) if store.path.is_dir() else None
    size = options.block_residues or (plan.shard_residues if plan else default_shard_residues(d_in))
    source = ModelSource(load, sequences, layer, max_tokens=max_tokens, block_residues=size)
    return OpenSource(kind="model", source=source, model=model, layer=layer, n_residues=source.n_residues(),
                      n_skipped=0, max_tokens=max_tokens, dtype=dtype)


def model_width(model: str) -> int | None:
    """The embedding width of a released ESM-2 by hub name (None for a checkpoint path)."""
    from sae.plm import ESM2_MODELS

    spec = ESM2_MODELS.get(model)
    return spec.embed_dim if spec else None


def select_stored(store: Any, known: set[str], accessions: list[str] | None) -> tuple[set[str], int]:
    """The stored proteins to read (all with a database row, or the listed ones) and how many were left."""
    stored = store.accessions()
    if accessions is None:
        wanted = {a for a in stored if a in known}
        if not wanted:
            raise InputError("none of the embedded proteins is in the database; run `plmlabel swissprot "
                             "import` with the proteins that were embedded.")
        return wanted, len(set(stored)) - len(wanted)
    requested = list(dict.fromkeys(accessions))
    in_store = set(stored)
    no_embedding = [a for a in requested if a not in in_store]
    if no_embedding:
        raise InputError(f"{len(no_embedding)} of the {len(requested)} listed proteins have no embeddings "
                         f"({', '.join(no_embedding[:3])}{', ...' if len(no_embedding) > 3 else ''}); "
                         "run `plmlabel embed` for them first, or use --from-model.")
    no_row = [a for a in requested if a not in known]
    if no_row:
        raise InputError(f"{len(no_row)} of the listed proteins are not in the database "
                         f"({', '.join(no_row[:3])}{', ...' if len(no_row) > 3 else ''}).")
    return set(requested), 0


def count_stored(store: Any, wanted: set[str]) -> int:
    total = 0
    for number in store.shard_numbers():
        index = store.shard_index(number)
        offsets = index["offsets"]
        total += sum(offsets[i + 1] - offsets[i] for i, a in enumerate(index["accessions"]) if a in wanted)
    return total
