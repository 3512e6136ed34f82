"""`steer` on a workspace: load ESM-2 and the SAE, clamp one feature, report what changes.

    steer(workspace, sae_id, feature, sequence=... | accession=..., clamp=..., ...) -> SteerReport
    steer_loaded(plm, sae, layer, feature, sequence, ...) -> SteerReport     (no workspace; tests, bench)

The per-position report compares the amino-acid probabilities (over the 20 standard ones) of one
forward pass with and without the clamp; the enrichment table compares them averaged over the clamped
residues, and the composition of sequences sampled with and without the clamp (same seed).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from sae.steer import (
    STANDARD,
    Clamp,
    composition,
    decode_tokens,
    layer_module,
    parse_positions,
    resample,
    spliced,
    standard_ids,
    tokenize,
)
from storage.errors import InputError, NotFoundError
from storage.workspace import Workspace

MAX_STEER_RESIDUES = 1022


class PositionChange(BaseModel):
    position: int  # 1-based
    residue: str
    clamped: bool
    activation: float  # the feature's activation there before the clamp
    total_variation: float  # 1/2 sum |p_clamped - p_base|
    gains: list[tuple[str, float]]  # the amino acids whose probability rose most (delta)
    losses: list[tuple[str, float]]
    base: list[float]  # probabilities over STANDARD
    steered: list[float]


class Enrichment(BaseModel):
    amino_acid: str
    p_base: float  # mean probability over the clamped residues, unclamped model
    p_steered: float
    delta: float
    freq_base: float | None = None  # frequency at the clamped residues in unclamped samples
    freq_steered: float | None = None
    log2_ratio: float | None = None  # samples, with a pseudocount of 1/(20 n)


class SteerReport(BaseModel):
    sae_id: str | None
    feature: int
    layer: int
    model: str
    device: str
    accession: str | None
    sequence: str
    clamp: float | None  # None = each residue's current value
    feature_max: float | None
    positions: list[int]  # 1-based clamped residues
    max_abs_logit_diff: float  # over every position's logits, clamped vs unmodified (0 = no change)
    positions_report: list[PositionChange]
    enrichment: list[Enrichment]  # by delta, largest first
    samples: list[str]
    base_samples: list[str]
    seconds_per_sample: float | None
    seed: int


def _top(delta: np.ndarray, n: int, reverse: bool) -> list[tuple[str, float]]:
    order = np.argsort(-delta if reverse else delta, kind="stable")[:n]
    return [(STANDARD[i], round(float(delta[i]),
                                6)) for i in order if (delta[i] > 0) == reverse and delta[i] != 0]


def steer_loaded(plm: Any, sae: Any, layer: int, feature: int, sequence: str, *, clamp: Clamp,
                 feature_max: float | None = None, positions: str | list[int] | None = None,
                 n_samples: int = 0, sweeps: int = 1, mask_fraction: float = 0.1, temperature: float = 1.0,
                 seed: int = 0, sae_id: str | None = None, accession: str | None = None) -> SteerReport:
    from sae.plm import check_sequence

    model, alphabet = plm.model, plm.alphabet
    if not 0 <= feature < sae.d_sae:
        raise InputError(f"feature {feature} is out of range: the SAE has {sae.d_sae} features "
                         f"(0-{sae.d_sae - 1}).")
    layer_module(model, layer)
    if sae.d_in != model.embed_dim:
        raise InputError(f"the SAE takes width {sae.d_in}, but {plm.name} layer {layer} has width "
                         f"{model.embed_dim}; steer with the model the SAE was trained on.")
    sequence = check_sequence(accession or "the sequence", sequence)
    if len(sequence) > MAX_STEER_RESIDUES:
        raise InputError(f"the sequence has {len(sequence)} residues; steering reads at most "
                         f"{MAX_STEER_RESIDUES} (ESM-2's context).")
    if n_samples < 0 or sweeps < 1 or not 0 < mask_fraction <= 1 or not (math.isfinite(temperature)
                                                                          and temperature > 0):
        raise InputError("--samples must be >= 0, --sweeps >= 1, --mask-fraction in (0, 1] and "
                         "--temperature > 0.")
    chosen = positions if isinstance(positions, list) else parse_positions(positions, len(sequence))
    if any(not 0 <= p < len(sequence) for p in chosen):
        raise InputError(f"a position lies outside the sequence (residues 1-{len(sequence)}).")
    value = clamp.resolve(feature_max)
    device = plm.device
    tokens = tokenize(alphabet, sequence).to(device)
    ids = standard_ids(alphabet)
    with torch.no_grad():
        base_out = model(tokens)
        hidden = {}
        with _Capture(model, layer, hidden):
            model(tokens)
        acts = sae.encode(hidden["x"][1:-1, 0])[:, feature].float().cpu().numpy()
        with spliced(model, sae, layer, feature, chosen, value):
            steered_out = model(tokens)
    base_logits, steered_logits = base_out["logits"][0], steered_out["logits"][0]
    max_diff = float((steered_logits - base_logits).abs().max())
    base_p = torch.softmax(base_logits[1:-1, ids.to(device)].float(), -1).cpu().numpy()
    steer_p = torch.softmax(steered_logits[1:-1, ids.to(device)].float(), -1).cpu().numpy()
    clamped_set = set(chosen)
    report_rows = []
    for i, residue in enumerate(sequence):
        delta = steer_p[i] - base_p[i]
        report_rows.append(PositionChange(
            position=i + 1, residue=residue, clamped=i in clamped_set, activation=round(float(acts[i]), 6),
            total_variation=round(float(0.5 * np.abs(delta).sum()), 6), gains=_top(delta, 3, True),
            losses=_top(delta, 3, False), base=[round(float(v), 6) for v in base_p[i]],
            steered=[round(float(v), 6) for v in steer_p[i]]))
    samples: list[str] = []
    base_samples: list[str] = []
    per_sample = None
    if n_samples:
        options = dict(n_samples=n_samples, sweeps=sweeps, mask_fraction=mask_fraction,
                       temperature=temperature,
                       seed=seed)
        started = time.perf_counter()
        with spliced(model, sae, layer, feature, chosen, value):
            samples = [decode_tokens(alphabet, r) for r in resample(model, tokens, ids, alphabet.mask_idx,
                                                                    **options)]
        per_sample = (time.perf_counter() - started) / n_samples
        base_samples = [decode_tokens(alphabet, r) for r in resample(model, tokens, ids, alphabet.mask_idx,
                                                                     **options)]
    where = chosen or list(range(len(sequence)))
    enrichment = _enrichment(base_p[where].mean(0), steer_p[where].mean(0), samples, base_samples, where)
    return SteerReport(
        sae_id=sae_id, feature=feature, layer=layer, model=plm.name, device=str(device), accession=accession,
        sequence=sequence, clamp=value, feature_max=feature_max, positions=[p + 1 for p in chosen],
        max_abs_logit_diff=max_diff, positions_report=report_rows, enrichment=enrichment,
        samples=samples, base_samples=base_samples,
        seconds_per_sample=None if per_sample is None else round(per_sample, 6), seed=seed)


def _enrichment(p_base: np.ndarray, p_steer: np.ndarray, samples: list[str], base_samples: list[str],
                where: list[int]) -> list[Enrichment]:
    freq_s = composition(samples, where) if samples else None
    freq_b = composition(base_samples, where) if base_samples else None
    pseudo = 1.0 / (len(STANDARD) * max(len(samples) * len(where), 1))
    rows = []
    for i, aa in enumerate(STANDARD):
        row = Enrichment(amino_acid=aa, p_base=round(float(p_base[i]), 6),
                         p_steered=round(float(p_steer[i]), 6),
                         delta=round(float(p_steer[i] - p_base[i]), 6))
        if freq_s is not None and freq_b is not None:
            row = row.model_copy(update={
                "freq_base": round(float(freq_b[i]), 6), "freq_steered": round(float(freq_s[i]), 6),
                "log2_ratio": round(float(np.log2((freq_s[i] + pseudo) / (freq_b[i] + pseudo))), 4)})
        rows.append(row)
    rows.sort(key=lambda r: (-r.delta, r.amino_acid))
    return rows


class _Capture:
    """Record the representation of `layer` during one forward (the splice with no clamp, read only)."""

    def __init__(self, model: Any, layer: int, into: dict[str, torch.Tensor]) -> None:
        self.model, self.layer, self.into = model, layer, into

    def __enter__(self) -> None:
        module, pre = layer_module(self.model, self.layer)
        if pre:
            self.handle = module.register_forward_pre_hook(lambda _m, args: self.into.__setitem__("x",
                                                                                                  args[0]))
        else:
            self.handle = module.register_forward_hook(
                lambda _m, _a, out: self.into.__setitem__("x", out[0] if isinstance(out, tuple) else out))

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def steer(workspace: Workspace, sae_id: str, feature: int, *, sequence: str | None = None,
          accession: str | None = None, clamp: Clamp, positions: str | None = None, n_samples: int = 0,
          sweeps: int = 1, mask_fraction: float = 0.1, temperature: float = 1.0, seed: int = 0,
          device: str | None = None, model: str | None = None) -> SteerReport:
    """Steer with SAE `sae_id` of the workspace (its ESM-2 and layer unless `model` names another)."""
    from sae.index import sae_directory
    from sae.model import load_sae
    from sae.plm import load_esm, resolve_device
    from storage.features_store import get_feature_stats
    from storage.proteins import get_protein
    from storage.saes import get_sae

    if (sequence is None) == (accession is None):
        raise InputError("give exactly one of --sequence and --accession.")
    workspace.require()
    settings = workspace.load_config()
    with workspace.db() as db:
        record = get_sae(db, sae_id)
        if not 0 <= feature < record.d_sae:
            raise InputError(f"feature {feature} is out of range: SAE {sae_id!r} has {record.d_sae} features "
                             f"(0-{record.d_sae - 1}).")
        if accession is not None:
            protein = get_protein(db, accession)
            if protein is None:
                raise NotFoundError(f"protein {accession} is not in the database.")
            sequence = protein.sequence
        stats = get_feature_stats(db, sae_id, feature)
    feature_max = stats.max_activation if stats is not None and stats.max_activation > 0 else None
    layer = record.layer if record.layer is not None else settings.plm.layer
    torch_device = resolve_device(device or settings.plm.device)
    plm = load_esm(model or record.plm_model or settings.plm.model, device=str(torch_device), dtype="fp32")
    sae = load_sae(sae_directory(workspace, record), device=torch_device)
    assert sequence is not None
    return steer_loaded(plm, sae, layer, feature, sequence, clamp=clamp, feature_max=feature_max,
                        positions=positions, n_samples=n_samples, sweeps=sweeps, mask_fraction=mask_fraction,
                        temperature=temperature, seed=seed, sae_id=sae_id, accession=accession)
