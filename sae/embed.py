"""The embed job: proteins of the workspace -> ESM-2 layer-L embeddings in an EmbeddingStore, resumable.

Shard plan: the proteins still to embed are sorted by (length, accession) and cut into shards of about
`shard_residues` residues. A shard whose index (`shard_NNNNN.json`) exists is finished and never
recomputed, so a rerun after a crash skips finished shards and re-plans only the rest (shards are
written in plan order, so the resumed run ends with the same shards as an uninterrupted one).
`plan.json` records each shard's accessions and a checksum of their sequences; a finished shard
whose proteins changed sequence since (a newer Swiss-Prot release) is embedded again in place.
Proteins added later go in new shards; proteins removed from the database keep their embeddings.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sae.embeddings import EmbeddingStore, store_path
from sae.plm_keys import plm_model_key, same_plm_model
from storage.errors import InputError, NotFoundError
from storage.lock import workspace_lock
from storage.workspace import Workspace

PLAN_NAME = "plan.json"
SHARD_BYTES = 128 * 2**20  # the largest fp16 shard file
SHARD_SECONDS = 30.0  # a shard holds about this much work, so an interrupt loses at most that
PROBE_RESIDUES = 4096  # the first shard of a new store, timed to size the rest
_CHUNK = 500  # accessions per SQL query (well under SQLite's parameter limit)


class EmbedSummary(BaseModel):
    """What `embed_proteins` did; `plmlabel embed --json` prints it."""

    model: str
    layer: int
    path: str
    n_proteins: int  # proteins asked for (all embedded when this returns)
    n_residues: int
    n_shards: int  # shards holding them
    n_skipped_shards: int  # of those, finished before this run
    seconds: float
    device: str | None = None  # None when nothing was left to compute
    dtype: str | None = None
    workers: int = 1  # Ray workers (1: this process)
    n_sampled: int | None = None  # with --sample-residues: the residues kept (of n_residues)
    seed: int | None = None  # with --sample-residues


class EmbedInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `embed_proteins`: what is finished stays, and a rerun continues."""

    def __init__(self, n_done: int, n_proteins: int, n_shards: int) -> None:
        super().__init__(f"{n_done} of {n_proteins} proteins embedded")
        self.n_done, self.n_proteins, self.n_shards = n_done, n_proteins, n_shards


class _Shard(BaseModel):
    number: int
    accessions: list[str]
    residues: int
    checksum: str


class _Plan(BaseModel):
    model: str
    layer: int
    shard_residues: int
    shards: list[_Shard] = []


# --- input ------------------------------------------------------------------------------------------
def read_accession_file(path: str | Path) -> list[str]:
    """Accessions from a text file: the first word of each line; blank lines and '#' comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no accession file at {path}.")
    accessions = []
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            accessions.append(words[0])
    if not accessions:
        raise InputError(f"{path} lists no accessions.")
    return accessions


def _fetch(db, accessions: list[str]) -> dict[str, str]:
    """accession -> sequence for those of `accessions` in the database."""
    found: dict[str, str] = {}
    for i in range(0, len(accessions), _CHUNK):
        chunk = accessions[i:i + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in db.query(f"select accession, sequence from proteins where accession in ({marks})",
                            tuple(chunk)):
            found[row["accession"]] = row["sequence"]
    return found


def load_sequences(db, accessions: list[str] | None) -> dict[str, str]:
    """accession -> sequence for the chosen proteins (all when None); unknown accessions are an error."""
    if accessions is None:
        rows = db.query("select accession, sequence from proteins")
        sequences = {row["accession"]: row["sequence"] for row in rows}
    else:
        wanted = list(dict.fromkeys(accessions))
        sequences = _fetch(db, wanted)
        missing = [acc for acc in wanted if acc not in sequences]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise InputError(f"{len(missing)} accession(s) are not in the workspace: {shown}.")
    if not sequences:
        raise InputError("there are no proteins to embed; import Swiss-Prot entries first.")
    return sequences


# --- planning -----------------------------------------------------------------------------------------
def _checksum(accessions: list[str], sequences: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for accession in accessions:
        digest.update(f"{accession}:{sequences[accession].upper()}\n".encode())
    return digest.hexdigest()[:16]


def plan_shards(sequences: dict[str, str], shard_residues: int, first_number: int = 0) -> list[_Shard]:
    """Cut proteins sorted by (length, accession) into shards of about `shard_residues` residues."""
    order = sorted(sequences, key=lambda acc: (len(sequences[acc]), acc))
    shards: list[_Shard] = []
    current: list[str] = []
    size = 0
    for accession in order:
        length = len(sequences[accession])
        if current and size + length > shard_residues:
            shards.append(_make_shard(first_number + len(shards), current, size, sequences))
            current, size = [], 0
        current.append(accession)
        size += length
    if current:
        shards.append(_make_shard(first_number + len(shards), current, size, sequences))
    return shards


def _make_shard(number: int, accessions: list[str], residues: int, sequences: dict[str, str]) -> _Shard:
    return _Shard(number=number, accessions=accessions, residues=residues,
                  checksum=_checksum(accessions, sequences))


def default_shard_residues(embed_dim: int) -> int:
    return max(1024, SHARD_BYTES // (2 * embed_dim))


def _read_plan(path: Path) -> _Plan | None:
    try:
        return _Plan.model_validate_json((path / PLAN_NAME).read_text())
    except (OSError, ValueError):
        return None  # no plan (or a damaged one): finished shards still count, the rest is re-planned


def _write_plan(path: Path, plan: _Plan) -> None:
    tmp = path / (PLAN_NAME + ".tmp")
    tmp.write_text(plan.model_dump_json())
    os.replace(tmp, path / PLAN_NAME)


def _clean_debris(path: Path, finished: set[int]) -> None:
    """Remove what a crash left: temp files and shard arrays without their index."""
    for entry in path.iterdir():
        orphan = re.fullmatch(r"shard_(\d{5})\.npy", entry.name)
        if entry.name.endswith(".tmp") or (orphan and int(orphan.group(1)) not in finished):
            entry.unlink(missing_ok=True)


# --- the job ------------------------------------------------------------------------------------------
class _Work(BaseModel):
    """What a run has to do, worked out from the store on disk before any compute."""

    finished: dict[int, list[str]]  # shard number -> accessions, for every finished shard
    plan: _Plan | None
    redo: list[_Shard]  # finished shards to embed again (their sequences changed)
    skipped: list[int]  # finished shards holding requested proteins, left as they are
    todo: dict[str, str]  # accession -> sequence of requested proteins in no finished shard


def _work(path: Path, workspace: Workspace, sequences: dict[str, str]) -> _Work:
    store = EmbeddingStore(path)
    finished = {n: store.shard_index(n)["accessions"] for n in store.shard_numbers()}
    _clean_debris(path, set(finished))
    plan = _read_plan(path)
    planned = {shard.number: shard for shard in plan.shards} if plan else {}
    wanted = set(sequences)
    redo: list[_Shard] = []
    skipped: list[int] = []
    with workspace.db() as db:
        for number, accessions in sorted(finished.items()):
            if not wanted.intersection(accessions):
                continue
            current = _fetch(db, accessions)
            shard = planned.get(number)
            if shard and len(current) == len(accessions) and _checksum(accessions, current) != shard.checksum:
                redo.append(_make_shard(number, accessions, sum(map(len, current.values())), current))
                sequences.update(current)  # the whole shard is embedded again, asked-for or not
            else:
                skipped.append(number)
    done = {accession for accessions in finished.values() for accession in accessions}
    todo = {acc: seq for acc, seq in sequences.items() if acc not in done}
    return _Work(finished=finished, plan=plan, redo=redo, skipped=skipped, todo=todo)


class RayOptions(BaseModel):
    """`--ray [ADDRESS] --workers N`: embed the blocks on Ray workers (sae/ray_pool.py)."""

    address: str | None = None  # None: a local Ray started for the run
    workers: int | None = None


def embed_proteins(workspace: Workspace, model: str, layer: int, accessions: list[str] | None,
                   max_tokens: int, device: str, dtype: str,
                   progress: Callable[[int, int], None] | None = None, *,
                   shard_residues: int | None = None, sample_residues: int | float | None = None,
                   seed: int = 0, ray: RayOptions | None = None) -> EmbedSummary:
    """Embed the workspace's proteins (all, or `accessions`) with ESM-2 `model` at `layer`.

    `progress(done, total)` counts residues computed in this run. The model is loaded only when
    something is left to compute. Each shard appears complete or not at all. `sample_residues` keeps
    only a uniform sample of the residues (a count, or a fraction; sae/embed_sample.py); `ray` runs
    ESM-2 on Ray workers, a shard a task (the same shards, and numbers, as one process).
    """
    from sae.plm import ESM2_MODELS, check_sequence

    started = time.monotonic()
    if layer < 0:
        raise InputError(f"layer must be 0 or more, not {layer}.")
    if shard_residues is not None and shard_residues < 1:
        raise InputError("shard_residues must be positive.")
    spec = ESM2_MODELS.get(model)
    if spec and layer > spec.num_layers:
        raise InputError(f"layer {layer} is out of range: {model} has layers 0..{spec.num_layers}.")
    model_key = plm_model_key(model, workspace.root)  # relative inside the workspace
    with workspace.db() as db:
        sequences = load_sequences(db, accessions)
    for accession, sequence in sequences.items():
        check_sequence(accession, sequence)  # a bad residue fails before any compute
    wanted = set(sequences)
    n_residues = sum(map(len, sequences.values()))

    if ray is not None:
        _ray_ready()  # the extra is installed, before any folder is made
    path = store_path(workspace.embeddings_dir, model_key, layer)
    created = [folder for folder in (path, path.parent, workspace.embeddings_dir) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    engine = _Engine(model, device, dtype, layer, max_tokens, ray)
    try:
        with engine:
            if sample_residues is not None:
                from sae.embed_sample import sample_proteins

                return sample_proteins(workspace, path, engine, model_key, sequences, sample_residues, seed,
                                       shard_residues, progress, started)
            return _embed_locked(workspace, path, engine, model_key, layer, sequences, wanted, n_residues,
                                 progress, shard_residues, started)
    except BaseException:
        _remove_created(created)
        raise


def _ray_ready() -> None:
    from sae.ray_pool import _ray

    _ray()


class _Engine:
    """Where shards are embedded: ESM-2 in this process, or Ray tasks (`ray`), loaded on first use."""

    def __init__(self, model: str, device: str, dtype: str, layer: int, max_tokens: int,
                 ray: RayOptions | None) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.layer, self.max_tokens = layer, max_tokens
        self.ray = ray
        self._plm: Any = None
        self._pool: Any = None
        self.used_device: str | None = None
        self.used_dtype: str | None = None
        self.embed_dim: int | None = None

    def __enter__(self) -> _Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.__exit__(*exc)
            self._pool = None

    @property
    def workers(self) -> int:
        return (self._pool.workers or 1) if self._pool is not None else 1

    def plm(self) -> Any:
        from sae.plm import load_esm

        if self._plm is None:
            self._plm = load_esm(self.model, device=self.device, dtype=self.dtype)
            if self.layer > self._plm.num_layers:
                raise InputError(f"layer {self.layer} is out of range: {self.model} has layers "
                                 f"0..{self._plm.num_layers}.")
            self.embed_dim = self._plm.embed_dim
            self.used_device = str(self._plm.device)
            self.used_dtype = str(self._plm.dtype).removeprefix("torch.")
        return self._plm

    def start(self) -> None:
        """Load ESM-2 here, or start (reach) Ray: what fails before any compute."""
        if self.ray is None:
            self.plm()
        elif self._pool is None:
            from sae.ray_pool import RayPool

            pool = RayPool(self.ray.address, self.ray.workers)
            self._pool = pool.__enter__()
            self.used_device = pool.device
            self.used_dtype = self.dtype

    def blocks(self, blocks: list[list[tuple[str, str]]],
               tick: Callable[[int], None] | None = None) -> Iterator[list[tuple[str, Any]]]:
        """float16 embeddings of each block of (accession, sequence), in block order."""
        self.start()
        if self._pool is None:
            from sae.plm import embed_sequences

            for items in blocks:
                arrays = {}
                for accession, rows in embed_sequences(self.plm(), items, self.layer, self.max_tokens):
                    arrays[accession] = rows.astype("float16")  # what the store keeps; half the memory
                    if tick:
                        tick(len(rows))
                yield [(accession, arrays[accession]) for accession, _ in items]
            return
        from sae.ray_pool import embed_task

        model = _portable_model(self.model)
        calls = ((model, self._pool.device, self.dtype, self.layer, self.max_tokens, items)
                 for items in blocks)
        for block in self._pool.map(embed_task, calls):
            if block and self.embed_dim is None:
                self.embed_dim = int(block[0][1].shape[1])
            if tick:
                tick(sum(len(rows) for _, rows in block))
            yield block


def _portable_model(model: str) -> str:
    """A checkpoint path as an absolute path (a Ray worker runs in another folder); hub names as they are."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _remove_created(created: list[Path]) -> None:
    """Take back the folders a refused or interrupted run created, when they hold no finished shard."""
    for folder in created:  # deepest first
        if not folder.exists() or any(folder.rglob("shard_*.json")):
            return
        shutil.rmtree(folder, ignore_errors=True)


def _embed_locked(workspace: Workspace, path: Path, engine: _Engine, model_key: str, layer: int,
                  sequences: dict[str, str], wanted: set[str], n_residues: int,
                  progress: Callable[[int, int], None] | None, shard_residues: int | None,
                  started: float) -> EmbedSummary:
    from sae.plm import ESM2_MODELS

    with workspace_lock(path / ".lock", f"embed {engine.model} layer {layer}"):
        store = EmbeddingStore(path)
        if store.exists and not same_plm_model(store.manifest.get("model"), model_key, workspace.root):
            raise InputError(
                f"{path} holds embeddings of {store.manifest.get('model')}, not {model_key}; "
                "delete that folder or use the same model."
            )
        if store.exists and store.manifest.get("sample_residues"):
            raise InputError(f"{path} holds a sample of residues (embed --sample-residues); delete that "
                             "folder to embed every residue, or sample again.")
        work = _work(path, workspace, sequences)
        new: list[_Shard] = []
        if work.todo or work.redo:
            engine.start()  # a missing checkpoint, a bad layer or an unreachable Ray fails here
            spec = ESM2_MODELS.get(engine.model)
            width = engine.embed_dim or (spec.embed_dim if spec else None)
            if width is not None:
                store = EmbeddingStore.create(path, model=model_key, layer=layer, d_model=width)
            timed = shard_residues is None and work.plan is None  # a new store: size shards by time
            size = shard_residues or (work.plan.shard_residues if work.plan else PROBE_RESIDUES)
            planned = {shard.number: shard for shard in work.plan.shards} if work.plan else {}
            first = max([*work.finished, -1]) + 1  # numbers of unfinished shards are free again
            new = plan_shards(work.todo, size, first) if work.todo else []
            redone = {shard.number for shard in work.redo}
            kept = [planned.get(n) or _Shard(number=n, accessions=accs, residues=0, checksum="")
                    for n, accs in work.finished.items() if n not in redone]

            def save_plan() -> None:
                _write_plan(path, _Plan(model=model_key, layer=layer, shard_residues=size,
                                        shards=sorted([*kept, *work.redo, *new], key=lambda s: s.number)))

            save_plan()
            total = sum(shard.residues for shard in [*work.redo, *new])
            counted = [0]

            def tick(n: int) -> None:
                counted[0] += n
                if progress:
                    progress(counted[0], total)

            if progress:
                progress(0, total)
            queue = [*work.redo, *new]
            done = {acc for n, accs in work.finished.items() if n not in redone for acc in accs} & wanted
            try:
                while queue:
                    # a new store sizes its shards on a first, timed one (a shard on one worker with Ray)
                    batch, queue = (queue[:1], queue[1:]) if timed and queue[0] in new else (queue, [])
                    tick_at = time.monotonic()
                    items = ([(acc, sequences[acc]) for acc in shard.accessions] for shard in batch)
                    for shard, block in zip(batch, engine.blocks(items, tick), strict=True):
                        if not store.exists:
                            store = EmbeddingStore.create(path, model=model_key, layer=layer,
                                                          d_model=int(block[0][1].shape[1]))
                        # a shard being replaced stops counting as finished before its array is overwritten
                        (path / f"shard_{shard.number:05d}.json").unlink(missing_ok=True)
                        store.write_shard(shard.number, block)
                        done.update(acc for acc in shard.accessions if acc in wanted)
                    if timed and batch[0] in new:
                        timed = False
                        rate = batch[0].residues / max(time.monotonic() - tick_at, 1e-6)
                        cap = default_shard_residues(store.d_model)
                        size = int(min(cap, max(1024, rate * SHARD_SECONDS)))
                        rest = {acc: sequences[acc] for s in queue for acc in s.accessions}
                        replanned = plan_shards(rest, size, batch[0].number + 1) if rest else []
                        queue = replanned
                        new = [s for s in new if s.number <= batch[0].number] + replanned
                        save_plan()
            except KeyboardInterrupt:
                finished = len(work.skipped) + sum(1 for s in [*work.redo, *new]
                                                   if (path / f"shard_{s.number:05d}.json").exists())
                raise EmbedInterrupted(len(done), len(wanted), finished) from None

        return EmbedSummary(
            model=model_key, layer=layer, path=str(path), n_proteins=len(wanted), n_residues=n_residues,
            n_shards=len(work.skipped) + len(work.redo) + len(new), n_skipped_shards=len(work.skipped),
            seconds=round(time.monotonic() - started, 3),
            device=engine.used_device if (work.todo or work.redo) else None,
            dtype=engine.used_dtype if (work.todo or work.redo) else None,
            workers=engine.workers if engine.ray is not None else 1,
        )
