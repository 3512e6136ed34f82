"""Training an SAE: the loop (`train_sae`, fed by any iterator of tensors) and its data producer.

The loop is architecture-agnostic: each architecture's `training_step` returns its loss (MSE plus L1,
AuxK or L0 terms) in the SAE's normalised space. Around it: Adam, linear LR warm-up and a linear decay to
zero over the last `decay_fraction` of steps, an L1 warm-up, unit-norm decoder rows (the gradient
component along each row is removed before the step and rows are renormalised after it), dead-feature
tracking (tokens since each feature last fired; TopK/BatchTopK feed the dead ones to AuxK) and periodic
checkpoints (model, optimizer, step, dead-feature counters; written to a temp file and renamed).

Resuming loads the checkpoint and skips the batches already consumed, so an iterator that yields the
same sequence again (as `embedding_batches` does for a given seed) gives exactly the weights an
uninterrupted run would have given.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from sae.embeddings import EmbeddingStore, store_path
from sae.model import (
    REGISTRY,
    SAE,
    TrainContext,
    check_fits_layer,
    check_sae_id,
    create_sae,
    install_and_record,
    plm_model_key,
    refuse_existing,
)
from storage.errors import InputError
from storage.lock import workspace_lock
from storage.saes import SaeRecord
from storage.workspace import Workspace

CHECKPOINT_NAME = "checkpoint.pt"
HOLDOUT_FRACTION = 0.05
HOLDOUT_SALT = "plmlabel-holdout-1"  # one salt for every SAE: SAEs of a store share held-out proteins

ProgressFn = Callable[[int, int, dict[str, float]], None]


class TrainConfig(BaseModel):
    """Hyperparameters of one training run (what the SAE is, is its SAEConfig)."""

    model_config = ConfigDict(extra="forbid")

    total_tokens: int = Field(10_000_000, gt=0)
    batch_size: int = Field(4096, gt=0)
    lr: float = Field(3e-4, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int | None = Field(None, ge=0)  # default: 5% of the steps, at most 1,000
    decay_fraction: float = Field(0.2, ge=0, le=1)  # linear decay to 0 over this last part of the run
    l1_coefficient: float = Field(5.0, ge=0)  # relu
    l1_warmup_fraction: float = Field(0.05, ge=0, le=1)
    l0_coefficient: float = Field(1.0, ge=0)  # jumprelu
    aux_k_coefficient: float = Field(1.0 / 32.0, ge=0)  # topk, batchtopk
    dead_tokens: int | None = Field(None, gt=0)  # default: min(10M, total_tokens / 10)
    grad_clip: float | None = Field(1.0, gt=0)
    unit_norm_decoder: bool = True
    init_b_dec: bool = True  # start b_dec at the mean of the first batch
    checkpoint_every: int = Field(1000, ge=0)  # steps; 0: only on interruption
    seed: int = 0

    @property
    def steps(self) -> int:
        return math.ceil(self.total_tokens / self.batch_size)

    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(1000, self.steps // 20)

    def dead_after(self) -> int:
        return self.dead_tokens or max(self.batch_size, min(10_000_000, self.total_tokens // 10))

    def lr_at(self, step: int) -> float:
        """LR of (0-based) `step`: linear warm-up, constant, linear decay to 0 at the end."""
        warmup = self.warmup()
        factor = 1.0
        if warmup and step < warmup:
            factor = (step + 1) / warmup
        decay_steps = int(self.steps * self.decay_fraction)
        if decay_steps:
            factor = min(factor, (self.steps - step) / decay_steps)
        return self.lr * max(0.0, factor)

    def l1_at(self, step: int) -> float:
        ramp = int(self.steps * self.l1_warmup_fraction)
        return self.l1_coefficient * (min(1.0, (step + 1) / ramp) if ramp else 1.0)


class TrainResult(BaseModel):
    steps: int  # optimizer steps done in total (including those before a resume)
    tokens: int
    seconds: float  # this run only
    resumed_from_step: int | None
    final: dict[str, float]  # mean over the last steps (up to 100): loss, mse, fvu, l0, ...
    dead_features: int  # features that did not fire in the last `dead_after` tokens
    dead_fraction: float
    norm_scale: float | None
    history: list[dict[str, float]]  # about 100 points: step, loss, mse, l0, lr


# --- checkpoints ------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: say so rather than start over silently
        raise InputError(f"the training checkpoint {path} cannot be read ({exc}); delete it to start over.") \
            from exc


def has_checkpoint(directory: Path) -> bool:
    return (Path(directory) / CHECKPOINT_NAME).exists()


# --- the loop ---------------------------------------------------------------------------------------------


def _check_batch(x: torch.Tensor, d_in: int, step: int) -> None:
    if x.ndim != 2 or x.shape[1] != d_in:
        raise InputError(f"batch {step} has shape {tuple(x.shape)}; the SAE takes [n, {d_in}].")
    if not torch.isfinite(x).all():
        raise InputError(f"batch {step} of the training data contains NaN or infinite values.")


@torch.no_grad()
def _fit_norm_scale(sae: SAE, x: torch.Tensor) -> None:
    """For `scale` normalisation: pick the factor giving mean token norm sqrt(d_in) on this batch."""
    mean_norm = float(x.float().norm(dim=-1).mean())
    if not mean_norm > 0:
        raise InputError("the first training batch is all zeros; cannot fit the normalisation scale.")
    sae.cfg.norm_scale = math.sqrt(sae.d_in) / mean_norm


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {key: float(np.mean([row[key] for row in rows])) for key in keys}


def train_sae(sae: SAE, batches: Iterable[torch.Tensor], cfg: TrainConfig, *,
              checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
              progress: ProgressFn | None = None) -> TrainResult:
    """Train `sae` in place on `batches` ([n, d_in] raw embeddings) for `cfg.steps` steps.

    Stops early when the iterator ends. With `checkpoint_dir`, writes a checkpoint every
    `cfg.checkpoint_every` steps and on KeyboardInterrupt; with `resume`, continues from the one there
    (a missing checkpoint means a fresh start). `progress(step, total_steps, metrics)` after each step.
    """
    started = time.monotonic()
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    device = sae.device
    params = [p for p in sae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas)
    since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    step = 0
    resumed_from = None
    history: list[dict[str, float]] = []
    if resume and ckpt_dir is not None:
        state = load_checkpoint(ckpt_dir)
        if state is not None:
            saved_cfg = state["train_cfg"]
            for key in ("batch_size", "total_tokens", "seed"):
                if saved_cfg.get(key) != getattr(cfg, key):
                    raise InputError(
                        f"the checkpoint was made with {key}={saved_cfg.get(key)}, not {getattr(cfg, key)}; "
                        "resume with the same settings or start over."
                    )
            if (state["sae_cfg"]["architecture"], state["sae_cfg"]["d_in"], state["sae_cfg"]["d_sae"]) != (
                    sae.architecture, sae.d_in, sae.d_sae):
                raise InputError("the checkpoint holds an SAE of another architecture or shape.")
            sae.cfg.norm_scale = state["sae_cfg"].get("norm_scale")
            sae.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            since_fired = state["since_fired"].to(device)
            step = resumed_from = int(state["step"])
            history = list(state.get("history", []))

    def checkpoint() -> None:
        if ckpt_dir is None:
            return
        _save_checkpoint(ckpt_dir / CHECKPOINT_NAME, {
            "step": step, "model": sae.state_dict(), "optimizer": optimizer.state_dict(),
            "since_fired": since_fired.cpu(), "sae_cfg": sae.cfg.model_dump(mode="json"),
            "train_cfg": cfg.model_dump(mode="json"), "history": history,
        })

    total = cfg.steps
    dead_after = cfg.dead_after()
    history_every = max(1, total // 100)
    recent: list[dict[str, float]] = []
    iterator: Iterator[torch.Tensor] = iter(batches)
    for _ in range(step):  # the batches a resumed run already consumed
        if next(iterator, None) is None:
            break
    sae.train()
    try:
        while step < total:
            x = next(iterator, None)
            if x is None:
                break
            x = x.to(device=device, dtype=torch.float32)
            _check_batch(x, sae.d_in, step)
            if step == 0:
                if sae.cfg.normalization == "scale" and sae.cfg.norm_scale is None:
                    _fit_norm_scale(sae, x)
                if cfg.init_b_dec:
                    with torch.no_grad():
                        sae.b_dec.copy_(sae.normalize(x)[0].mean(dim=0))
            xn, _ = sae.normalize(x)
            lr = cfg.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ctx = TrainContext(dead_mask=since_fired >= dead_after, l1_coefficient=cfg.l1_at(step),
                               l0_coefficient=cfg.l0_coefficient, aux_k_coefficient=cfg.aux_k_coefficient)
            out = sae.training_step(xn, ctx)
            if not torch.isfinite(out.loss):
                raise InputError(f"training diverged (loss is {float(out.loss)}) at step {step}; lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.unit_norm_decoder:
                sae.remove_gradient_parallel_to_decoder()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if cfg.unit_norm_decoder:
                sae.set_decoder_norm_to_unit()
            sae.after_step(out)
            with torch.no_grad():
                fired_per_feature = (out.feats > 0).sum(dim=0)
                since_fired += x.shape[0]
                since_fired[fired_per_feature > 0] = 0
                residual = (xn - out.recon).pow(2).sum()
                variance = (xn - xn.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
                metrics = {"loss": float(out.loss), **out.parts, "fvu": float(residual / variance),
                           "l0": float(fired_per_feature.sum()) / x.shape[0],
                           "dead_fraction": float((since_fired >= dead_after).float().mean()), "lr": lr}
            step += 1
            recent = (recent + [metrics])[-100:]
            if step % history_every == 0 or step == total:
                history.append({"step": float(step), **{k: metrics[k] for k in ("loss", "mse", "l0", "lr")}})
            if progress is not None:
                progress(step, total, metrics)
            if ckpt_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    sae.eval()
    dead = int((since_fired >= dead_after).sum())
    return TrainResult(
        steps=step, tokens=step * cfg.batch_size, seconds=round(time.monotonic() - started, 3),
        resumed_from_step=resumed_from, final=_mean(recent), dead_features=dead,
        dead_fraction=dead / sae.d_sae, norm_scale=sae.cfg.norm_scale, history=history,
    )


# --- data -------------------------------------------------------------------------------------------------


def is_heldout(accession: str, fraction: float, salt: str) -> bool:
    """A fixed pseudo-random split: the same accession, fraction and salt always land the same side."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{salt}:{accession}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _chunks(store: EmbeddingStore, number: int, accessions: set[str] | None,
            size: int) -> Iterator[np.ndarray]:
    """Rows of one shard (all, or those of `accessions`), at most `size` rows at a time."""
    array = store.shard_array(number)
    if accessions is None:
        for start in range(0, array.shape[0], size):
            yield np.asarray(array[start:start + size])
        return
    index = store.shard_index(number)
    offsets = index["offsets"]
    pending: list[np.ndarray] = []
    n = 0
    for i, accession in enumerate(index["accessions"]):
        if accession in accessions:
            pending.append(np.asarray(array[offsets[i]:offsets[i + 1]]))
            n += pending[-1].shape[0]
            if n >= size:
                yield np.concatenate(pending)
                pending, n = [], 0
    if pending:
        yield np.concatenate(pending)


def embedding_batches(store: EmbeddingStore, batch_size: int, shuffle_buffer: int, seed: int,
                      accessions: Iterable[str] | None = None, *, n_tokens: int | None = None,
                      loop: bool = True) -> Iterator[torch.Tensor]:
    """float32 batches [batch_size, d] of residue embeddings, shuffled, from the store's shards.

    Each pass visits the shards in a seeded random order; rows go through a shuffle buffer of about
    `shuffle_buffer` rows (rows from several shards mix). With `loop`, passes repeat (a new order each)
    until `n_tokens` rows were yielded (forever if None); without, one pass ends with a last short
    batch. The same store, arguments and seed give the same batches.
    """
    store.require()
    if batch_size < 1:
        raise InputError("batch_size must be positive.")
    chosen = set(accessions) if accessions is not None else None
    numbers = store.shard_numbers()
    if chosen is not None:
        numbers = [n for n in numbers if chosen.intersection(store.shard_index(n)["accessions"])]
    if not numbers:
        raise InputError(f"no embeddings to train on in {store.path} (none of the chosen proteins).")
    shuffle_buffer = max(shuffle_buffer, batch_size)
    chunk = max(batch_size, shuffle_buffer // 2)
    yielded = 0
    epoch = 0
    held: list[np.ndarray] = []
    n_held = 0
    while True:
        rng = np.random.default_rng([seed, epoch])
        produced_any = False
        for number in rng.permutation(numbers):
            for rows in _chunks(store, int(number), chosen, chunk):
                if rows.shape[0] == 0:
                    continue
                produced_any = True
                held.append(rows)
                n_held += rows.shape[0]
                if n_held < shuffle_buffer + batch_size:
                    continue
                buffer = np.concatenate(held)
                buffer = buffer[rng.permutation(buffer.shape[0])]
                n_out = (buffer.shape[0] - shuffle_buffer // 2) // batch_size * batch_size
                for start in range(0, n_out, batch_size):
                    yield torch.from_numpy(buffer[start:start + batch_size].astype(np.float32))
                    yielded += batch_size
                    if n_tokens is not None and yielded >= n_tokens:
                        return
                held, n_held = [buffer[n_out:]], buffer.shape[0] - n_out
        if not produced_any:
            raise InputError(f"no embeddings to train on in {store.path} (the chosen proteins have no rows).")
        epoch += 1
        if not loop:
            break
    if n_held:
        buffer = np.concatenate(held)
        buffer = buffer[np.random.default_rng([seed, epoch]).permutation(buffer.shape[0])]
        for start in range(0, buffer.shape[0], batch_size):
            yield torch.from_numpy(buffer[start:start + batch_size].astype(np.float32))


# --- a training run of the workspace -------------------------------------------------------------------


def training_dir(workspace: Workspace, sae_id: str) -> Path:
    """Where an unfinished training keeps its checkpoint (a hidden sibling of saes/<sae_id>/)."""
    return workspace.saes_dir / f".{sae_id}.training"


def train_in_workspace(
    workspace: Workspace, sae_id: str, *, model: str, layer: int, architecture: str, d_sae: int,
    k: int | None = None, l1_coefficient: float | None = None, l0_coefficient: float | None = None,
    tokens: int = 10_000_000, batch_size: int = 4096, lr: float = 3e-4, seed: int = 0,
    resume: bool = False, force: bool = False, holdout_fraction: float = HOLDOUT_FRACTION,
    shuffle_buffer: int | None = None, checkpoint_every: int = 1000, device: str = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[SaeRecord, TrainResult]:
    """Train an SAE on the workspace's embeddings of (model, layer) and record it as `sae_id`.

    A fraction of the proteins (a fixed hash split) is held out for `sae eval`. The SAE appears in
    saes/<sae_id>/ and the `saes` table only once training has finished; until then its checkpoint
    lives in saes/.<sae_id>.training/, which `resume` continues from.
    """
    check_sae_id(sae_id)
    if not REGISTRY[architecture][1].trainable:
        raise InputError(f"{architecture} SAEs are imported, not trained (see `plmlabel sae import`).")
    if architecture in ("topk", "batchtopk"):
        k = k or 32
    elif k is not None:
        raise InputError(f"--k applies to topk and batchtopk, not {architecture}.")
    if l1_coefficient is not None and architecture != "relu":
        raise InputError(f"--l1 applies to relu SAEs, not {architecture}.")
    if l0_coefficient is not None and architecture != "jumprelu":
        raise InputError(f"--l0 applies to jumprelu SAEs, not {architecture}.")
    if not 0 <= holdout_fraction < 1:
        raise InputError("the held-out fraction must be in [0, 1).")
    key = plm_model_key(model, workspace.root)
    store = EmbeddingStore(store_path(workspace.embeddings_dir, key, layer)).require()
    d_in = store.d_model
    workdir = training_dir(workspace, sae_id)
    workspace.saes_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock(workspace.saes_dir / f".{sae_id}.lock", f"sae train {sae_id}"):
        refuse_existing(workspace, sae_id, force)
        if has_checkpoint(workdir) and not resume:
            if not force:
                raise InputError(
                    f"an unfinished training of {sae_id!r} exists; pass --resume to continue it "
                    "or --force to start over."
                )
            shutil.rmtree(workdir)
        cfg = TrainConfig(
            total_tokens=tokens, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
            **({"l1_coefficient": l1_coefficient} if l1_coefficient is not None else {}),
            **({"l0_coefficient": l0_coefficient} if l0_coefficient is not None else {}),
        )
        accessions = store.accessions()
        train_accessions = [a for a in accessions if not is_heldout(a, holdout_fraction, HOLDOUT_SALT)]
        if not train_accessions:
            raise InputError("every embedded protein is held out; embed more proteins or lower the fraction.")
        holdout = {"fraction": holdout_fraction, "salt": HOLDOUT_SALT,
                   "n_heldout": len(accessions) - len(train_accessions)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sae = create_sae(architecture, d_in, d_sae, **({"k": k} if k is not None else {}),
                             normalization="scale", plm_model=key, layer=layer)
        check_fits_layer(sae.cfg, model, layer, d_in)
        from sae.plm import resolve_device

        sae = sae.to(resolve_device(device))
        batches = embedding_batches(
            store, batch_size, shuffle_buffer or max(16 * batch_size, 65_536), seed,
            accessions=train_accessions if len(train_accessions) < len(accessions) else None,
            n_tokens=cfg.steps * batch_size,
        )
        result = train_sae(sae, batches, cfg, checkpoint_dir=workdir, resume=resume, progress=progress)
        if result.steps == 0:
            raise InputError("there was no training data.")
        sae.cfg.training = {
            **cfg.model_dump(mode="json"), "holdout": holdout, "steps": result.steps,
            "tokens": result.tokens, "final": result.final, "dead_fraction": result.dead_fraction,
        }
        record = install_and_record(workspace, sae_id, sae.cpu(), source="trained")
        shutil.rmtree(workdir, ignore_errors=True)
    return record, result
