"""Steering ESM-2 by clamping one SAE feature: the splice, the per-position change and the sampler.

The SAE is spliced into ESM-2's residual stream at its layer and the reconstruction error is kept
(InterPLM, InterProt): at a clamped residue the stream becomes

    x' = x + (decode(f with f_k := c) - decode(f))        f = encode(x)

which is x + SAE(x') - SAE(x) with the error x - SAE(x) carried along. At residues that are not
clamped nothing is computed, and a clamp equal to the feature's current value adds exactly zero, so
clamping nothing reproduces the unmodified model's logits bit for bit (the model's own forward runs;
the splice is a hook on the block that outputs the layer).

Layer numbering is sae/plm.py's: 0 = the token embeddings, i = after block i, the last = after the
final layer norm. BOS/EOS are never clamped.

Sampling is iterative masked-LM resampling (Gibbs-style): each sweep visits every residue once in a
random order, `mask_fraction` of the residues at a time, masks them and draws each from the model's
distribution over the 20 amino acids at that position, with the clamp in place (the unclamped run
uses the same seed, so the two differ only by the clamp).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from storage.errors import InputError

STANDARD = "ACDEFGHIKLMNPQRSTVWY"


@dataclass(frozen=True)
class Clamp:
    """What to set the feature to: a raw value, a multiple of its max, or its current value."""

    value: float | None = None
    multiple: float | None = None

    @property
    def is_current(self) -> bool:
        return self.value is None and self.multiple is None

    def resolve(self, feature_max: float | None) -> float | None:
        """The raw value (None = the feature's current value at each residue)."""
        if self.multiple is not None:
            if feature_max is None or not math.isfinite(feature_max) or feature_max <= 0:
                raise InputError("a clamp given as a multiple needs the feature's max; run `plmlabel index` "
                                 "first (or give a raw --clamp VALUE).")
            return self.multiple * feature_max
        return self.value


def parse_clamp(text: str) -> Clamp:
    """'4.5' (raw), '3x' (3 times the feature's max over the index) or 'current' (no change)."""
    raw = (text or "").strip().lower()
    if raw == "current":
        return Clamp()
    multiple = raw.endswith("x")
    try:
        number = float(raw[:-1] if multiple else raw)
    except ValueError:
        raise InputError(f"--clamp {text!r} is not a number, a multiple such as 3x, or 'current'.") from None
    if not math.isfinite(number):
        raise InputError(f"--clamp {text!r} is not a finite number.")
    if number < 0:
        what = "multiple of the feature's max" if multiple else "value"
        raise InputError(f"--clamp {text!r} is a negative {what}; SAE features are non-negative "
                         "(use 0 to switch the feature off).")
    return Clamp(multiple=number) if multiple else Clamp(value=number)


def parse_positions(text: str | None, length: int) -> list[int]:
    """'5-12,20' (1-based, inclusive) -> sorted 0-based residues; None or 'all' = every residue."""
    if text is None or text.strip().lower() in ("", "all"):
        return list(range(length))
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            a, dash, b = part.partition("-")
            start, end = int(a), int(b) if dash else int(a)
        except ValueError:
            raise InputError(f"--positions {text!r}: {part!r} is not a position or a range like "
                             "5-12.") from None
        if start > end:
            raise InputError(f"--positions {text!r}: the range {part} runs backwards.")
        if start < 1 or end > length:
            raise InputError(f"--positions {text!r}: {part} lies outside the sequence (residues 1-{length}).")
        out.update(range(start - 1, end))
    return sorted(out)


def layer_module(model: Any, layer: int) -> tuple[Any, bool]:
    """(module, pre-hook?) whose output (or input) is the representation of `layer`."""
    if not 0 <= layer <= model.num_layers:
        raise InputError(f"the SAE reads layer {layer}, which this ESM-2 does not have (layers 0-"
                         f"{model.num_layers}).")
    if layer == 0:
        return model.layers[0], True
    if layer == model.num_layers:
        return model.emb_layer_norm_after, False
    return model.layers[layer - 1], False


def clamp_stream(sae: Any, x: torch.Tensor, feature: int, rows: torch.Tensor,
                 value: float | None) -> torch.Tensor:
    """x [T, B, E] with `feature` clamped at token rows `rows` (reconstruction error kept)."""
    if len(rows) == 0:
        return x
    xr = x.index_select(0, rows)
    xn, state = sae.normalize(xr)
    feats = sae.features_normalized(xn)
    clamped = feats.clone()
    if value is not None:
        clamped[..., feature] = value
    delta = sae.denormalize(sae.decode_normalized(clamped),
                            state) - sae.denormalize(sae.decode_normalized(feats),
                                                                                     state)
    out = x.clone()
    out.index_copy_(0, rows, xr + delta.to(x.dtype))
    return out


@contextmanager
def spliced(model: Any, sae: Any, layer: int, feature: int, positions: Sequence[int],
            value: float | None) -> Iterator[None]:
    """Within the block, `model(tokens)` runs with the feature clamped at residues `positions` (0-based)."""
    module, pre = layer_module(model, layer)
    device = next(model.parameters()).device
    rows = torch.as_tensor([p + 1 for p in positions], dtype=torch.long, device=device)  # BOS is row 0

    if pre:
        def hook(_module, args, kwargs):
            return (clamp_stream(sae, args[0], feature, rows, value), *args[1:]), kwargs

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        def hook(_module, _args, output):
            if isinstance(output, tuple):
                return (clamp_stream(sae, output[0], feature, rows, value), *output[1:])
            return clamp_stream(sae, output, feature, rows, value)

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def standard_ids(alphabet: Any) -> torch.Tensor:
    return torch.tensor([alphabet.get_idx(a) for a in STANDARD], dtype=torch.long)


def tokenize(alphabet: Any, sequence: str) -> torch.Tensor:
    ids = [alphabet.cls_idx, *(alphabet.get_idx(a) for a in sequence), alphabet.eos_idx]
    return torch.tensor([ids], dtype=torch.long)


def residue_probabilities(model: Any, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Probabilities over the 20 amino acids at every residue [B, L, 20] (renormalised over them)."""
    with torch.no_grad():
        logits = model(tokens)["logits"]
    return torch.softmax(logits[:, 1:-1, ids.to(logits.device)].float(), dim=-1)


def resample(model: Any, tokens: torch.Tensor, ids: torch.Tensor, mask_idx: int, *, n_samples: int,
             sweeps: int, mask_fraction: float, temperature: float, seed: int) -> list[torch.Tensor]:
    """`n_samples` sequences by iterative masked-LM resampling from `tokens` [1, T] (see the module doc)."""
    device = tokens.device
    ids = ids.to(device)
    length = tokens.shape[1] - 2
    k = max(1, math.ceil(mask_fraction * length))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    current = tokens.repeat(n_samples, 1)
    rows = torch.arange(n_samples, device=device)[:, None]
    with torch.no_grad():
        for _ in range(sweeps):
            orders = torch.stack([torch.randperm(length, generator=generator) for _ in range(n_samples)]) + 1
            for start in range(0, length, k):
                chosen = orders[:, start:start + k].to(device)
                masked = current.clone()
                masked[rows, chosen] = mask_idx
                logits = model(masked)["logits"][rows, chosen][..., ids].float() / temperature
                probs = torch.softmax(logits, dim=-1).cpu()
                draws = torch.multinomial(probs.reshape(-1, len(ids)), 1, generator=generator)
                current[rows, chosen] = ids[draws.reshape(chosen.shape).to(device)]
    return [row[1:-1].cpu() for row in current]


def decode_tokens(alphabet: Any, row: torch.Tensor) -> str:
    return "".join(alphabet.get_tok(int(t)) for t in row)


def composition(sequences: Sequence[str], positions: Sequence[int]) -> np.ndarray:
    """Frequency of each of the 20 amino acids at `positions` over `sequences` [20]."""
    counts = np.zeros(len(STANDARD))
    for sequence in sequences:
        for p in positions:
            i = STANDARD.find(sequence[p])
            if i >= 0:
                counts[i] += 1
    total = counts.sum()
    return counts / total if total else counts
