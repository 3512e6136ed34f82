"""The activation index of one SAE: `index/<sae_id>/`, and what the agent loads from it.

Contract types first (`FeatureExamples` is what the labeling agent gets for one feature), then the
public API:

    build_index(workspace, sae_id, ...) -> IndexSummary      run the SAE over stored embeddings
    open_index(workspace, sae_id) -> IndexReader              the folder, lazily (sae/index_store.py)
    load_feature_examples(workspace, db, sae_id, feature)     one feature's examples, in milliseconds

The on-disk layout is documented in sae/index_store.py, the passes in sae/index_build.py and the
example selection in sae/index_select.py.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sae.index_select import ExampleSizes
from sae.index_store import IndexReader, Slot
from sae.stream import StreamOptions
from storage.errors import InputError, NotFoundError
from storage.protein import Protein, ProteinFeature
from storage.workspace import Workspace

__all__ = [
    "ExampleProtein", "ExampleSizes", "FeatureExamples", "IndexReader", "IndexSummary", "ResidueActivation",
    "build_index", "load_feature_examples", "open_index",
]


class ResidueActivation(BaseModel):
    """A residue where the feature fires: 1-based position and raw activation."""

    model_config = ConfigDict(frozen=True)

    position: int
    value: float


class ExampleProtein(BaseModel):
    """One protein shown to the explainer, with where and how strongly the feature fires on it."""

    model_config = ConfigDict(frozen=True)

    protein: Protein
    kind: Literal["top", "quantile", "silent"]
    max_activation: float  # raw per-protein max
    normalized: float  # max_activation / the feature's max over the index, in [0, 1]
    firing: tuple[ResidueActivation, ...] = ()  # residues with activation > 0, by position

    def overlapping_features(self) -> list[ProteinFeature]:
        """The protein's Swiss-Prot features that cover at least one firing residue."""
        return self.protein.features_at([r.position for r in self.firing])


class FeatureExamples(BaseModel):
    """Everything the agent needs to label one feature.

    `heldout` is the TEST half of the held-out proteins: what the one-shot scorer simulates and scores
    on, once (the simulator sees their metadata only); `heldout_actuals` (raw per-protein max) and
    `heldout_normalized` are aligned with it and never go into a prompt.
    `validation*` is the disjoint validation half, matched to the same activation distribution: the
    only held-out proteins whose activations the agent (agent/agentic/) may see. It is empty for an
    index of format 1 (built before the split); `has_validation` tells.
    """

    model_config = ConfigDict(frozen=True)

    sae_id: str
    feature: int
    max_activation: float
    frac_proteins: float
    examples: tuple[ExampleProtein, ...]
    heldout: tuple[Protein, ...]
    heldout_actuals: tuple[float, ...]
    heldout_normalized: tuple[float, ...]
    top_concepts: tuple[dict, ...] = ()  # from `plmlabel concepts`: {"concept", "f1_test", ...}
    # added with the index (defaults keep older constructors valid):
    frac_residues: float = 0.0
    n_indexed: int = 0  # proteins in the index
    quantiles: tuple[float, ...] = ()  # decile edges of the non-zero per-protein maxima
    heldout_firing: tuple[tuple[ResidueActivation, ...], ...] = ()  # aligned with heldout; never prompted
    index_hash: str | None = None
    validation: tuple[Protein, ...] = ()
    validation_actuals: tuple[float, ...] = ()
    validation_normalized: tuple[float, ...] = ()
    validation_firing: tuple[tuple[ResidueActivation, ...], ...] = ()
    has_validation: bool = False  # False: an index of format 1, rerun `plmlabel index`


class IndexSummary(BaseModel):
    """What `build_index` wrote."""

    sae_id: str
    path: str
    n_proteins: int
    n_residues: int
    n_features: int
    n_dead_features: int  # never fire on the indexed proteins
    nnz: int  # non-zero (protein, feature) maxima stored
    n_skipped: int  # proteins with embeddings but no row in the database (left out)
    seed: int
    sizes: dict[str, int]
    weights_hash: str
    index_hash: str
    seconds: float
    residues_per_s: float
    source: str = "store"  # where the embeddings came from: "store" or "model" (ESM-2 on the fly)
    workers: int = 1  # Ray workers of pass 1 (1: this process)


Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): cumulative per stage ("activations", "grouping", "examples", ...)."""


# --- building -----------------------------------------------------------------------------------------


def sae_directory(workspace: Workspace, record: Any) -> Path:
    """The folder of an SAE record (`saes.path`, relative to the workspace unless absolute)."""
    path = Path(record.path) if getattr(record, "path", None) else workspace.sae_dir(record.sae_id)
    return path if path.is_absolute() else workspace.root / path


def embedding_store_for(workspace: Workspace, record: Any) -> tuple[Any, str, int]:
    """(EmbeddingStore, model, layer) an SAE reads; NotFoundError when nothing is embedded yet."""
    from sae.embeddings import EmbeddingStore, store_path

    config = workspace.load_config()
    model = record.plm_model or config.plm.model
    layer = record.layer if record.layer is not None else config.plm.layer
    store = EmbeddingStore(store_path(workspace.embeddings_dir, model, layer))
    if not store.exists or not store.shard_numbers():
        raise NotFoundError(f"no embeddings of {model} layer {layer} yet; run `plmlabel embed` first.")
    return store, model, layer


def build_index(workspace: Workspace, sae_id: str, accessions: list[str] | None = None,
                seed: int | None = None, sizes: ExampleSizes | None = None,
                progress: Progress | None = None, *, device: str | None = None,
                max_elements: int | None = None, stream: StreamOptions | None = None) -> IndexSummary:
    """Run SAE `sae_id` over the proteins' embeddings and (re)write `index/<sae_id>/` and `sae_features`.

    Embeddings come from the store of the SAE's model and layer, or straight from ESM-2 (`stream`:
    `from_model`, and by default when no full store exists; `ray` fans pass 1 out over Ray workers);
    both give the same index (sae/stream.py says why). `accessions`: the proteins to index (all
    proteins that have embeddings and a database row when None; from the model: all proteins of the
    database). `seed`, `sizes`: default to the workspace's `[index]` config; `device` to `[plm]
    device` (auto = CUDA when present). A failure leaves the old index and the database as they were.
    """
    from sae.activations import DEFAULT_MAX_ELEMENTS, limit_heap_fragmentation, sae_encoder
    from sae.index_build import replace_directory, write_index
    from sae.model import load_sae, weights_hash
    from sae.plm import resolve_device
    from sae.stream import open_source
    from storage.features_store import FeatureStats, write_feature_stats
    from storage.lock import workspace_lock
    from storage.proteins import all_accessions
    from storage.saes import get_sae

    started = time.monotonic()
    workspace.require()
    limit_heap_fragmentation()
    settings = workspace.load_config()
    config = settings.index
    stream = stream or StreamOptions()
    seed = config.seed if seed is None else seed
    # Each half must be large enough to validate a label on its own (`[label] min_heldout`): the
    # configured sizes grow to it; explicitly passed sizes keep their test half (a caller's choice).
    floor = settings.label.min_heldout
    if sizes is None:
        sizes = ExampleSizes(n_top=config.n_top, per_bin=config.per_bin, n_silent=config.n_silent,
                             n_heldout=max(config.n_heldout, floor), n_validation=config.n_validation)
    sizes = replace(sizes, n_validation=max(sizes.n_validation, floor))
    with workspace.db() as db:
        record = get_sae(db, sae_id)
        known = set(all_accessions(db))
    sae_dir = sae_directory(workspace, record)
    current_hash = weights_hash(sae_dir)
    device = device or settings.plm.device
    sae = load_sae(sae_dir, device=resolve_device(device))
    opened = open_source(workspace, record, sae.d_in, known, accessions, stream, device)
    max_elements = max_elements or DEFAULT_MAX_ELEMENTS
    encode = sae_encoder(sae)

    target = workspace.index_path(sae_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    with workspace_lock(target.parent / f".{sae_id}.lock", f"index {sae_id}"), \
            _pass1(opened, stream, encode, sae, sae_dir, max_elements) as maxima:
        old_hash = _manifest_weights_hash(target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            manifest = write_index(
                tmp, opened.source, encode, d_sae=sae.d_sae, n_residues_hint=opened.n_residues,
                sizes=sizes, seed=seed, max_elements=max_elements, progress=progress, maxima=maxima,
                manifest_extra={"sae_id": sae_id, "weights_hash": current_hash, "d_in": sae.d_in,
                                "plm_model": opened.model, "layer": opened.layer},
            )
            reader = IndexReader(tmp)
            arrays = reader.all_stats()
            n_proteins, n_res = reader.n_proteins, reader.n_residues
            stats = [
                FeatureStats(sae_id=sae_id, feature=f, max_activation=float(arrays["feature_max"][f]),
                             frac_residues=float(arrays["n_fire_residues"][f]) / max(n_res, 1),
                             frac_proteins=float(arrays["n_fire_proteins"][f]) / max(n_proteins, 1),
                             quantiles=tuple(float(q) for q in arrays["quantiles"][f]),
                             index_hash=manifest["index_hash"])
                for f in range(sae.d_sae)
            ]
            with workspace.db() as db, db.transaction():
                write_feature_stats(db, stats, keep_concepts=old_hash == current_hash)
                replace_directory(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _open_cached.cache_clear()
    seconds = time.monotonic() - started
    return IndexSummary(
        sae_id=sae_id, path=str(target), n_proteins=manifest["n_proteins"],
        n_residues=manifest["n_residues"], n_features=sae.d_sae, n_dead_features=manifest["n_dead"],
        nnz=manifest["nnz"], n_skipped=opened.n_skipped, seed=seed, sizes=manifest["sizes"],
        weights_hash=current_hash, index_hash=manifest["index_hash"], seconds=round(seconds, 3),
        residues_per_s=round(manifest["n_residues"] / max(seconds, 1e-9), 1), source=opened.kind,
        workers=(stream.workers or 0) if stream.ray else 1,
    )


@contextmanager
def _pass1(opened: Any, stream: StreamOptions, encode: Any, sae: Any, sae_dir: Path,
           max_elements: int) -> Iterator[Iterable[Any]]:
    """Pass 1's per-protein maxima, block by block: here, or on Ray workers."""
    from sae.index_build import iter_maxima

    if not stream.ray:
        yield (part for block in opened.source.blocks()
               for part in iter_maxima(block, encode, sae.d_sae, max_elements))
        return
    from sae.ray_pool import RayPool, maxima_task, sae_files

    source = opened.source
    with RayPool(stream.ray_address, stream.workers) as pool:
        stream.workers = pool.workers
        files = pool.put(sae_files(sae_dir))
        calls = ((opened.model, pool.device, opened.dtype, opened.layer, opened.max_tokens, files,
                  max_elements, source.block_items(n)) for n in range(len(source.plan)))
        yield pool.map(maxima_task, calls)


def _manifest_weights_hash(path: Path) -> str | None:
    try:
        return IndexReader(path).weights_hash
    except (NotFoundError, InputError, KeyError, ValueError):
        return None


# --- loading -------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _open_cached(path: str, mtime_ns: int) -> IndexReader:
    return IndexReader(path)


@lru_cache(maxsize=64)
def _weights_hash_cached(path: str, mtime_ns: int, size: int) -> str:
    from sae.model import weights_hash

    return weights_hash(Path(path).parent)


def current_weights_hash(sae_dir: Path) -> str:
    """sha256 of the SAE's weights file, computed once per version of the file (mtime, size)."""
    from sae.model import WEIGHTS_FILENAME

    path = Path(sae_dir) / WEIGHTS_FILENAME
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise NotFoundError(f"no weights file at {path}.") from None
    return _weights_hash_cached(str(path), stat.st_mtime_ns, stat.st_size)


def open_index(workspace: Workspace, sae_id: str, *, record: Any = None) -> IndexReader:
    """The index of `sae_id`, checked against the SAE's current weights when `record` is given."""
    path = workspace.index_path(sae_id)
    manifest = path / "manifest.json"
    try:
        mtime = manifest.stat().st_mtime_ns
    except FileNotFoundError:
        raise NotFoundError(f"SAE {sae_id!r} has no activation index; run `plmlabel index {sae_id}` "
                            "first.") from None
    reader = _open_cached(str(path), mtime)
    if record is not None:
        reader.check_weights(current_weights_hash(sae_directory(workspace, record)))
    return reader


def _firing(positions: Any, values: Any) -> tuple[ResidueActivation, ...]:
    return tuple(ResidueActivation(position=p + 1, value=v)
                 for p, v in zip(positions.tolist(), values.tolist(), strict=True))


def load_feature_examples(workspace: Workspace, db: Any, sae_id: str, feature: int) -> FeatureExamples:
    """Everything the agent needs for one feature, from the index and the database.

    Raises NotFoundError (no SAE, no index, a protein gone from the database) or InputError
    (feature out of range, index built from other weights).
    """
    from storage.features_store import get_top_concepts
    from storage.proteins import get_proteins
    from storage.saes import get_sae

    record = get_sae(db, sae_id)
    reader = open_index(workspace, sae_id, record=record)
    stats = reader.feature_stats(feature)
    slots = reader.slots(feature)
    proteins = get_proteins(db, [s.accession for s in slots])
    missing = [s.accession for s in slots if s.accession not in proteins]
    if missing:
        raise NotFoundError(f"{len(missing)} proteins of the index of {sae_id!r} are no longer in the "
                            f"database ({', '.join(missing[:3])}); rebuild with `plmlabel index {sae_id}`.")
    scale = stats.max_activation if stats.max_activation > 0 else 1.0

    def normalized(slot: Slot) -> float:
        return min(max(slot.max_activation / scale, 0.0), 1.0)

    examples, heldout, actuals, heldout_norm, heldout_firing = [], [], [], [], []
    validation: dict[str, list] = {"proteins": [], "actuals": [], "normalized": [], "firing": []}
    for slot in slots:
        firing = _firing(*reader.residue_activations(stats.feature, slot.slot))
        if slot.kind == "validation":
            validation["proteins"].append(proteins[slot.accession])
            validation["actuals"].append(slot.max_activation)
            validation["normalized"].append(normalized(slot))
            validation["firing"].append(firing)
        elif slot.kind == "heldout":
            heldout.append(proteins[slot.accession])
            actuals.append(slot.max_activation)
            heldout_norm.append(normalized(slot))
            heldout_firing.append(firing)
        else:
            examples.append(ExampleProtein(protein=proteins[slot.accession], kind=slot.kind,
                                           max_activation=slot.max_activation, normalized=normalized(slot),
                                           firing=firing))
    return FeatureExamples(
        sae_id=sae_id, feature=stats.feature, max_activation=stats.max_activation,
        frac_proteins=stats.frac_proteins, examples=tuple(examples), heldout=tuple(heldout),
        heldout_actuals=tuple(actuals), heldout_normalized=tuple(heldout_norm),
        top_concepts=tuple(get_top_concepts(db, sae_id, stats.feature)), frac_residues=stats.frac_residues,
        n_indexed=reader.n_proteins, quantiles=stats.quantiles, heldout_firing=tuple(heldout_firing),
        index_hash=reader.index_hash, validation=tuple(validation["proteins"]),
        validation_actuals=tuple(validation["actuals"]),
        validation_normalized=tuple(validation["normalized"]),
        validation_firing=tuple(validation["firing"]), has_validation=reader.has_validation,
    )
