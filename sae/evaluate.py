"""Judge an SAE: reconstruction metrics on stored embeddings and the masked-LM loss recovered.

On held-out proteins (those the SAE's training split left out; for imported SAEs, a seeded sample of the
embedded proteins):

  mse             mean squared error per embedding element, in the raw embedding space
  fve             fraction of variance explained: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2
  l0              mean number of active features per residue
  dead_fraction   fraction of features that fire on no residue of the proteins evaluated (over n_tokens
                  residues): the definition of the activation index's dead features too, which counts
                  them over every indexed protein, so a small sample here overstates it. When the SAE
                  has an index built from its current weights, its figure is reported beside
                  (index_dead_fraction over index_n_tokens residues).
  loss_recovered  (CE_zero - CE_sae) / (CE_zero - CE_clean), masked-LM cross-entropy of ESM-2 on 15% of
                  residues (seeded, all replaced by <mask>) with the layer's residue activations left as
                  they are (clean), replaced by the SAE's reconstruction (sae) or by zeros (zero).

Splicing: for layer L below the last, the SAE replaces the input of transformer block L (= fair-esm's
representation L: block L's output, or for L = 0 the scaled token embeddings after token dropout); for
the last layer it replaces the output of `emb_layer_norm_after` (fair-esm's last representation is after
that norm). Only residue positions are replaced (BOS/EOS/padding stay clean), as only residues were
embedded for training. The activations spliced are those of the masked input, so they differ a little
from the stored (unmasked) embeddings. Proteins longer than 1,022 residues are cut to their first 1,022
for the LM part.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from sae.embeddings import EmbeddingStore, store_path
from sae.model import SAE, load_sae
from sae.plm_keys import resolve_plm_model
from sae.train import is_heldout
from storage.errors import InputError, NotFoundError
from storage.saes import get_sae, set_sae_metrics
from storage.workspace import Workspace

MASK_FRACTION = 0.15
LM_MAX_RESIDUES = 1022

EvalProgress = Callable[[int, int], None]


class EvalResult(BaseModel):
    sae_id: str | None = None
    heldout: str  # "training split" or "sample"
    n_proteins: int
    n_requested: int = 0  # --proteins
    n_available: int = 0  # the proteins the split (or the whole store, for a sample) offered
    n_stored: int = 0  # embedded proteins in the store
    holdout_fraction: float | None = None  # the training split's held-out fraction
    n_tokens: int
    mse: float
    fve: float | None  # None when the residues have no variance
    l0: float
    dead_fraction: float
    loss_recovered: float | None = None  # None when the LM part was skipped or CE_zero == CE_clean
    ce_clean: float | None = None
    ce_sae: float | None = None
    ce_zero: float | None = None
    n_lm_proteins: int = 0
    n_masked: int = 0
    seed: int = 0
    seconds: float = 0.0
    index_dead_fraction: float | None = None  # from the SAE's index, when built from these weights
    index_n_tokens: int | None = None
    index_n_proteins: int | None = None

    def describe_proteins(self) -> str:
        """Which proteins were evaluated, and why fewer than asked when they were."""
        if self.heldout == "training split":
            share = f"{self.holdout_fraction:.0%} " if self.holdout_fraction else ""
            text = f"{self.n_proteins:,} held-out proteins of the training split"
            if self.n_proteins < self.n_requested:
                text += (f" (all it holds out: {share}of the {self.n_stored:,} embedded; the rest trained "
                         f"the SAE, so --proteins {self.n_requested} could not be met)")
            return text
        text = f"{self.n_proteins:,} embedded proteins (a seeded sample; the SAE has no training split here)"
        if self.n_proteins < self.n_requested:
            text = (f"{self.n_proteins:,} embedded proteins (all that are embedded; --proteins "
                    f"{self.n_requested} could not be met)")
        return text

    def metrics(self) -> dict[str, Any]:
        return self.model_dump(exclude={"sae_id"})


# --- choosing proteins --------------------------------------------------------------------------------


def choose_proteins(store: EmbeddingStore, sae: SAE, n: int, seed: int) -> tuple[list[str], str]:
    """Up to `n` held-out proteins of the store, seeded; and how they were chosen.

    When the SAE was trained here, only its training split's held-out proteins are candidates (the others
    trained it), so fewer than `n` come back when the split holds out fewer."""
    accessions = store.accessions()
    if not accessions:
        raise InputError(f"no embedded proteins in {store.path}; run `plmlabel embed` first.")
    split = (sae.cfg.training or {}).get("holdout") or {}
    kind = "sample"
    if split.get("fraction"):
        heldout = [a for a in accessions if is_heldout(a, float(split["fraction"]), str(split["salt"]))]
        if heldout:
            accessions, kind = heldout, "training split"
    rng = np.random.default_rng(seed)
    if len(accessions) > n:
        accessions = [accessions[i] for i in sorted(rng.choice(len(accessions), n, replace=False))]
    return accessions, kind


# --- reconstruction metrics -------------------------------------------------------------------------------


def _token_batches(store: EmbeddingStore, accessions: list[str], size: int) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    n = 0
    for _, rows in store.iter_proteins(set(accessions)):
        pending.append(np.asarray(rows, dtype=np.float32))
        n += rows.shape[0]
        if n >= size:
            yield np.concatenate(pending)
            pending, n = [], 0
    if pending:
        yield np.concatenate(pending)


@torch.no_grad()
def reconstruction_metrics(sae: SAE, batches: Iterator[np.ndarray | torch.Tensor]) -> dict[str, Any]:
    """mse, fve, l0, dead_fraction and n_tokens over raw-embedding batches [n, d_in]."""
    sse = 0.0
    n_tokens = 0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    sum_x2 = torch.zeros(sae.d_in, dtype=torch.float64)
    active = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for batch in batches:
        x = torch.as_tensor(batch, dtype=torch.float32)
        if x.shape[-1] != sae.d_in:
            raise InputError(f"the SAE has d_in={sae.d_in} but the embeddings have width {x.shape[-1]}.")
        if not torch.isfinite(x).all():
            raise InputError("the embeddings contain NaN or infinite values.")
        recon, feats = sae(x.to(sae.device))
        recon, feats = recon.float().cpu(), feats.float().cpu()
        sse += float((recon - x).double().pow(2).sum())
        sum_x += x.double().sum(dim=0)
        sum_x2 += x.double().pow(2).sum(dim=0)
        active += float((feats > 0).sum())
        fired |= (feats > 0).any(dim=0)
        n_tokens += x.shape[0]
    if n_tokens == 0:
        raise InputError("no residues to evaluate on.")
    total_variance = float((sum_x2 - sum_x.pow(2) / n_tokens).sum())
    return {
        "n_tokens": n_tokens,
        "mse": sse / (n_tokens * sae.d_in),
        "fve": 1.0 - sse / total_variance if total_variance > 0 else None,
        "l0": active / n_tokens,
        "dead_fraction": 1.0 - float(fired.float().mean()),
    }


# --- loss recovered -----------------------------------------------------------------------------------------


def _splice(model: Any, layer: int, replace: Callable[[torch.Tensor], torch.Tensor],
            residue_mask: torch.Tensor) -> Any:
    """Hook ESM-2 so representation `layer` ([T, B, E] inside fair-esm) is `replace`d at residues."""
    mask_tb = residue_mask.transpose(0, 1)  # [T, B]

    def swap(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[mask_tb] = replace(x[mask_tb]).to(x.dtype)
        return x

    if layer < model.num_layers:
        def pre_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return (swap(args[0]), *args[1:]), kwargs

        return model.layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return swap(output)

    return model.emb_layer_norm_after.register_forward_hook(post_hook)


def _lm_batches(items: list[tuple[str, str]], max_tokens: int) -> Iterator[list[tuple[str, str]]]:
    items = sorted(items, key=lambda item: len(item[1]))
    batch: list[tuple[str, str]] = []
    for item in items:
        if batch and (len(item[1]) + 2) * (len(batch) + 1) > max_tokens:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@torch.no_grad()
def masked_lm_losses(sae: SAE, plm: Any, layer: int, sequences: list[tuple[str, str]], *, seed: int = 0,
                     mask_fraction: float = MASK_FRACTION, max_tokens: int = 4096,
                     progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Masked-LM cross-entropy (nats per masked residue): clean, SAE-spliced and zero-ablated."""
    if not 0 <= layer <= plm.num_layers:
        raise InputError(f"layer {layer} is out of range: the model has layers 0..{plm.num_layers}.")
    if sae.d_in != plm.embed_dim:
        raise InputError(f"the SAE has d_in={sae.d_in} but the ESM-2 has width {plm.embed_dim}.")
    alphabet = plm.alphabet
    rng = np.random.default_rng(seed)
    items = [(acc, seq[:LM_MAX_RESIDUES]) for acc, seq in sequences if seq]
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_masked = 0
    sae_device = sae.device

    def through_sae(x: torch.Tensor) -> torch.Tensor:
        return sae(x.to(sae_device, torch.float32)).recon.to(x.device)

    for batch in _lm_batches(items, max_tokens):
        _, _, tokens = plm.batch_converter(batch)
        special = tokens.eq(alphabet.cls_idx) | tokens.eq(alphabet.eos_idx) | tokens.eq(alphabet.padding_idx)
        residues = ~special
        masked = torch.zeros_like(residues)
        for row, (_, seq) in enumerate(batch):
            count = max(1, round(mask_fraction * len(seq)))
            positions = rng.choice(len(seq), size=min(count, len(seq)), replace=False) + 1  # after BOS
            masked[row, torch.as_tensor(positions)] = True
        targets = tokens[masked]
        inputs = tokens.masked_fill(masked, alphabet.mask_idx).to(plm.device)
        residues_dev = residues.to(plm.device)
        for mode, replace in (("clean", None), ("sae", through_sae), ("zero", torch.zeros_like)):
            handle = _splice(plm.model, layer, replace, residues_dev) if replace is not None else None
            try:
                logits = plm.model(inputs)["logits"]
            finally:
                if handle is not None:
                    handle.remove()
            picked = logits[masked.to(plm.device)].float()
            sums[mode] += float(torch.nn.functional.cross_entropy(picked, targets.to(plm.device),
                                                                  reduction="sum"))
        n_masked += int(masked.sum())
        if progress is not None:
            progress(len(batch))
    if n_masked == 0:
        raise InputError("no residues to mask for the loss-recovered metric.")
    ce = {mode: total / n_masked for mode, total in sums.items()}
    gap = ce["zero"] - ce["clean"]
    recovered = (ce["zero"] - ce["sae"]) / gap + 0.0 if abs(gap) > 1e-9 else None  # + 0.0: no -0.0
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
            "loss_recovered": recovered, "n_masked": n_masked, "n_lm_proteins": len(items)}


# --- the whole evaluation ---------------------------------------------------------------------------------


SequenceSource = Mapping[str, str] | Callable[[list[str]], Mapping[str, str]]


def evaluate_sae(sae: SAE, store: EmbeddingStore, *, n_proteins: int = 100, seed: int = 0,
                 plm: Any = None, sequences: SequenceSource | None = None, batch_tokens: int = 8192,
                 progress: EvalProgress | None = None) -> EvalResult:
    """All metrics of `sae` on held-out proteins of `store`.

    The loss-recovered part runs when `plm` (a sae.plm.LoadedPLM) is given; `sequences` maps accessions
    to sequences (or is a function fetching those of a list of accessions).
    """
    started = time.monotonic()
    if n_proteins < 1:
        raise InputError("the number of proteins to evaluate on must be positive.")
    store.require()
    if store.d_model != sae.d_in:
        raise InputError(
            f"the SAE has d_in={sae.d_in} but the embeddings at {store.path} have width {store.d_model}."
        )
    accessions, kind = choose_proteins(store, sae, n_proteins, seed)
    total = len(accessions) * (2 if plm is not None else 1)
    done = 0
    if progress:
        progress(0, total)
    recon = reconstruction_metrics(sae, _token_batches(store, accessions, batch_tokens))
    done += len(accessions)
    if progress:
        progress(done, total)
    split = (sae.cfg.training or {}).get("holdout") or {}
    stored = store.accessions()
    available = (sum(1 for a in stored if is_heldout(a, float(split["fraction"]), str(split["salt"])))
                 if kind == "training split" else len(stored))
    fraction = float(split["fraction"]) if kind == "training split" else None
    result: dict[str, Any] = {**recon, "heldout": kind, "n_proteins": len(accessions), "seed": seed,
                              "n_requested": n_proteins, "n_available": available, "n_stored": len(stored),
                              "holdout_fraction": fraction}
    if plm is not None:
        layer = sae.cfg.layer if sae.cfg.layer is not None else int(store.manifest["layer"])
        found = sequences(accessions) if callable(sequences) else (sequences or {})
        items = [(acc, found[acc]) for acc in accessions if found.get(acc)]
        if not items:
            raise InputError("none of the evaluated proteins has a sequence in the workspace database.")

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        result.update(masked_lm_losses(sae, plm, layer, items, seed=seed, progress=step))
    result["seconds"] = round(time.monotonic() - started, 3)
    return EvalResult(**result)


def _sequences(workspace: Workspace, accessions: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    with workspace.db() as db:
        for i in range(0, len(accessions), 500):
            chunk = accessions[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            for row in db.query(f"select accession, sequence from proteins where accession in ({marks})",
                                tuple(chunk)):
                found[row["accession"]] = row["sequence"]
    return found


def evaluate_in_workspace(workspace: Workspace, sae_id: str, *, n_proteins: int = 100, seed: int = 0,
                          loss_recovered: bool = True, device: str = "auto",
                          progress: EvalProgress | None = None) -> EvalResult:
    """Evaluate a recorded SAE on the workspace's embeddings (and its ESM-2), and store the metrics."""
    with workspace.db() as db:
        record = get_sae(db, sae_id)
    sae = load_sae(workspace.sae_dir(sae_id))
    # the row's model key is the one kept relative to the workspace (cfg.json may predate that)
    model, layer = record.plm_model or sae.cfg.plm_model, sae.cfg.layer
    if model is None or layer is None:
        raise InputError(f"SAE {sae_id} does not say which model and layer it reads; "
                         "re-import it with --model and --layer.")
    store = EmbeddingStore(store_path(workspace.embeddings_dir, model, layer)).require()
    plm = None
    if loss_recovered:
        from sae.plm import load_esm

        try:
            plm = load_esm(resolve_plm_model(model, workspace.root), device=device)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc} (or evaluate without the ESM-2 part: --no-loss-recovered)") from exc
        sae = sae.to(plm.device)
    result = evaluate_sae(sae, store, n_proteins=n_proteins, seed=seed, plm=plm,
                          sequences=lambda accessions: _sequences(workspace, accessions), progress=progress)
    result.sae_id = record.sae_id
    _index_dead(workspace, record, result)
    with workspace.db() as db:
        set_sae_metrics(db, sae_id, result.metrics())
    return result


def _index_dead(workspace: Workspace, record: Any, result: EvalResult) -> None:
    """The dead fraction of the SAE's index (same definition, over every indexed residue), when current."""
    from sae.index_store import IndexReader

    try:
        reader = IndexReader(workspace.index_path(record.sae_id))
    except (NotFoundError, InputError, ValueError, OSError):
        return
    manifest = reader.manifest
    if manifest.get("weights_hash") != record.weights_hash or "n_dead" not in manifest:
        return
    result.index_dead_fraction = int(manifest["n_dead"]) / max(reader.d_sae, 1)
    result.index_n_tokens = reader.n_residues
    result.index_n_proteins = reader.n_proteins
