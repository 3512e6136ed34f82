"""The SAELens side of a saved SAE: cfg.json keys and weights that SAELens 6.x's own
`SAE.load_from_disk` turns into our features and reconstructions.

One cfg.json serves both readers. SAELens reads `architecture` (its name: our relu is its `standard`,
our batchtopk is saved as its `jumprelu` with the threshold), d_in, d_sae, dtype, k,
rescale_acts_by_decoder_norm, apply_b_dec_to_input, normalize_activations, reshape_activations and
metadata, and ignores every other key (it filters the dict to its config dataclass's fields). We read
our own SAEConfig fields, with our architecture under `plmlabel_architecture`.

Normalisation: layer_norm is SAELens's layer_norm, unit_norm its constant_norm_rescale (same math).
SAELens has no constant input scale at inference, so `scale` (x * norm_scale) is folded into the saved
weights, as SAELens folds its own scaling factor: W_enc * s, W_dec / s, b_dec / s (pre-activations, and
so thresholds and b_enc, are unchanged); `load_sae` unfolds it to give back the SAE as trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sae.model import SAE

# The sae-lens release whose on-disk layout we write and that the interop tests run against (pinned in
# pyproject.toml's `interop` extra; a test keeps the two equal). SAELens reads cfg files without a
# version as pre-6.0 ones.
SAELENS_VERSION = "6.54.12"
OUR_ARCHITECTURE_KEY = "plmlabel_architecture"
SAELENS_NORMALIZATION = {
    "none": "none",
    "scale": "none",  # folded into the weights
    "layer_norm": "layer_norm",
    "unit_norm": "constant_norm_rescale",
}


def saelens_keys(sae: SAE) -> dict[str, Any]:
    """The cfg.json keys SAELens reads, with the values that make it compute what `sae` computes."""
    cfg = sae.cfg
    metadata: dict[str, Any] = {"sae_lens_version": SAELENS_VERSION}
    if cfg.plm_model is not None:
        metadata["model_name"] = cfg.plm_model
    return {
        "architecture": sae.saelens_architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "apply_b_dec_to_input": True,
        "normalize_activations": SAELENS_NORMALIZATION[cfg.normalization],
        "reshape_activations": "none",
        "metadata": metadata,
        **sae.saelens_fields(),
    }


def cfg_for_saving(sae: SAE, format_version: int) -> dict[str, Any]:
    """cfg.json: our SAEConfig (architecture under OUR_ARCHITECTURE_KEY) plus the SAELens keys."""
    ours = sae.cfg.model_dump(mode="json")
    ours[OUR_ARCHITECTURE_KEY] = ours.pop("architecture")
    ours["format_version"] = format_version
    theirs = saelens_keys(sae)
    clash = {key for key in theirs if key in ours and ours[key] != theirs[key]}
    if clash:  # a key both read must mean the same to both
        raise AssertionError(f"cfg keys {sorted(clash)} would mean different things to SAELens and plmlabel")
    return {**ours, **theirs}


def ours_from_saved(data: dict[str, Any]) -> dict[str, Any]:
    """Our cfg dict from a saved cfg.json (new layout, or an older one that held only our keys)."""
    if OUR_ARCHITECTURE_KEY not in data:
        return data
    data = dict(data)
    data["architecture"] = data.pop(OUR_ARCHITECTURE_KEY)
    return data


def _scaled(tensors: dict[str, torch.Tensor], s: float) -> dict[str, torch.Tensor]:
    """W_enc * s, W_dec / s, b_dec / s (in float64, cast back); other tensors unchanged."""
    factors = {"W_enc": s, "W_dec": 1.0 / s, "b_dec": 1.0 / s}
    return {name: (t.double() * factors[name]).to(t.dtype).contiguous() if name in factors else t
            for name, t in tensors.items()}


def fold_scale(tensors: dict[str, torch.Tensor], norm_scale: float) -> dict[str, torch.Tensor]:
    """Weights for x * norm_scale -> the same SAE on raw x (what SAELens computes with no normalisation)."""
    return _scaled(tensors, norm_scale)


def unfold_scale(tensors: dict[str, torch.Tensor], norm_scale: float) -> dict[str, torch.Tensor]:
    """Inverse of `fold_scale` (up to float rounding of the saved dtype)."""
    return _scaled(tensors, 1.0 / norm_scale)
