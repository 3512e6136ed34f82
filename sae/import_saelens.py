"""Import a SAELens folder (cfg.json + sae_weights.safetensors) as one of our SAEs, math unchanged.

What SAELens 6.x computes (sae_lens/saes/*.py), and how it maps onto ours:

  input       x' = norm(x) - b_dec * apply_b_dec_to_input; normalize_activations none and
              expected_average_only_in do nothing at inference (SAELens folds its factor on save),
              layer_norm is our layer_norm, constant_norm_rescale our unit_norm.
              apply_b_dec_to_input=false is folded into b_enc (b_enc + b_dec @ W_enc).
  standard    relu(x' @ W_enc + b_enc)                                    -> relu
  topk        TopK_k(h), h = x' @ W_enc + b_enc, times |W_dec_i| when
              rescale_acts_by_decoder_norm; decode divides by |W_dec_i|   -> topk, norms folded
              (W_enc, b_enc * |W_dec_i|, W_dec rows / |W_dec_i|: the same features and output)
  jumprelu    relu(h) * (h > threshold)  (or log_threshold, older files)  -> jumprelu
  batchtopk,  training checkpoints: their inference form is JumpReLU with every threshold equal to
  matryoshka_ the scalar `topk_threshold`, after folding the decoder norms as for topk
  batchtopk   (rescale_acts_by_decoder_norm defaults to true for these)   -> batchtopk
  pre-6.0     activation_fn_str/activation_fn relu or topk (k in activation_fn_kwargs); a
              `scaling_factor` with finetuning_scaling_factor multiplies features before W_dec.

Anything else (another architecture such as gated, another activation, reshape_activations hook_z,
covariance_whitening, tensors we do not know) is refused with one line naming the key: importing it
approximately would give silently wrong features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sae.model import CFG_FILENAME, SAE, WEIGHTS_FILENAME, create_sae, read_weights
from storage.errors import InputError, NotFoundError

# SAELens architecture -> ours; training-only architectures use a threshold for inference
_ARCHITECTURES = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "batchtopk",
    "matryoshka_batchtopk": "batchtopk",
}
_UNSUPPORTED_WHY = {
    "gated": "plmlabel has no gated SAE (separate b_gate/b_mag/r_mag encoder paths)",
}
_NORMALIZATION = {
    "none": "none",
    "expected_average_only_in": "none",
    "layer_norm": "layer_norm",
    "constant_norm_rescale": "unit_norm",
}
_BASE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILENAME
    if not cfg_path.exists():
        raise NotFoundError(f"no {CFG_FILENAME} in {path}.")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{cfg_path} is not valid JSON: {exc}.") from exc
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise InputError(f"{cfg_path} is not a SAELens config (no d_in/d_sae).")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise InputError(f"{cfg_path}: {key} {cfg[key]!r} is not a positive whole number.")
    return cfg


def _architecture(cfg: dict[str, Any], cfg_path: Path) -> tuple[str, str]:
    """(SAELens architecture, ours), refusing what we cannot compute exactly."""
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if activation not in (None, "relu", "topk"):
        raise InputError(f"{cfg_path}: activation_fn {activation!r} is not supported (only relu and topk).")
    if architecture == "standard" and activation == "topk":
        architecture = "topk"
    if architecture in _UNSUPPORTED_WHY:
        raise InputError(
            f"{cfg_path}: SAELens architecture {architecture!r} is not supported: "
            f"{_UNSUPPORTED_WHY[architecture]}."
        )
    if architecture not in _ARCHITECTURES:
        raise InputError(
            f"{cfg_path}: SAELens architecture {architecture!r} is not supported "
            f"(supported: {', '.join(_ARCHITECTURES)})."
        )
    return architecture, _ARCHITECTURES[architecture]


def _normalization(cfg: dict[str, Any], cfg_path: Path) -> str:
    value = cfg.get("normalize_activations")
    if value is None or value is False:
        value = "none"
    elif value is True:  # pre-6.0 flag: the April-2024 scaling, folded in before the file was saved
        value = "expected_average_only_in"
    if value not in _NORMALIZATION:
        raise InputError(f"{cfg_path}: normalize_activations {value!r} is not supported "
                         f"(supported: {', '.join(_NORMALIZATION)}).")
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in (None, "none"):
        raise InputError(f"{cfg_path}: reshape_activations {reshape!r} is not supported "
                         "(plmlabel feeds flat per-residue embeddings).")
    return _NORMALIZATION[value]


def _k(cfg: dict[str, Any], cfg_path: Path, architecture: str) -> int:
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if k is None:
        raise InputError(f"{cfg_path}: a {architecture} SAE needs k in cfg.json.")
    if isinstance(k, bool) or not isinstance(k, int | float) or float(k) != int(k):
        raise InputError(f"{cfg_path}: k {k!r} is not a whole number.")
    return int(k)


def _tensors(weights: Path, architecture: str, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    """The weights as float64, checked: names, shapes, finite values; threshold as [d_sae]."""
    raw = read_weights(weights)
    tensors = {name: t.double() for name, t in raw.items()}
    if "log_threshold" in tensors and "threshold" not in tensors:  # older JumpReLU files
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    if "topk_threshold" in tensors:  # BatchTopK training checkpoints: one scalar threshold
        scalar = tensors.pop("topk_threshold")
        if scalar.numel() != 1:
            raise InputError(f"{weights}: topk_threshold has shape {tuple(scalar.shape)}, expected ().")
        tensors.setdefault("threshold", scalar.reshape(()).expand(d_sae).clone())
    expected: dict[str, tuple[int, ...]] = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,),
                                            "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
        expected["threshold"] = (d_sae,)
    optional = {"scaling_factor": (d_sae,)}
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise InputError(f"{weights} is not a SAELens {architecture} SAE: no tensor {', '.join(missing)}.")
    unknown = sorted(set(tensors) - set(expected) - set(optional))
    if unknown:
        raise InputError(f"{weights}: tensor {', '.join(unknown)} is not part of a SAELens {architecture} "
                         "SAE that plmlabel can reproduce exactly.")
    for name, shape in {**expected, **optional}.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise InputError(f"{weights}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}.")
        if name in tensors and not torch.isfinite(tensors[name]).all():
            raise InputError(f"{weights}: {name} contains NaN or infinite values.")
    return tensors


def import_saelens(path: str | Path, *, plm_model: str | None = None, layer: int | None = None) -> SAE:
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"no SAELens folder at {path} (expected {CFG_FILENAME} and {WEIGHTS_FILENAME}).")
    cfg = _read_cfg(path)
    cfg_path, weights = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    theirs, ours = _architecture(cfg, cfg_path)
    normalization = _normalization(cfg, cfg_path)
    k = _k(cfg, cfg_path, theirs) if ours in ("topk", "batchtopk") else None
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    t = _tensors(weights, theirs, d_in, d_sae)

    w_enc, b_enc, w_dec, b_dec = t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]
    if not cfg.get("apply_b_dec_to_input", True):
        # theirs: x @ W_enc + b_enc; ours: (x - b_dec) @ W_enc + b_enc' with b_enc' = b_enc + b_dec @ W_enc
        b_enc = b_enc + b_dec @ w_enc
    factor = t.get("scaling_factor")
    if factor is not None and not torch.allclose(factor, torch.ones_like(factor)):
        if not cfg.get("finetuning_scaling_factor"):
            raise InputError(f"{cfg_path}: the weights hold a scaling_factor but finetuning_scaling_factor "
                             "is not set.")
        w_dec = w_dec * factor[:, None]  # pre-6.0: features scaled before W_dec
    # SAELens's training classes (batchtopk, matryoshka) default to rescaling; its inference topk does not
    rescale = bool(cfg.get("rescale_acts_by_decoder_norm", theirs in ("batchtopk", "matryoshka_batchtopk")))
    rescale = rescale and theirs != "standard" and theirs != "jumprelu"  # only topk-family classes read it
    if rescale:
        norms = w_dec.norm(dim=-1)
        if not (norms > 0).all():
            raise InputError(f"{weights}: W_dec has rows of norm 0, which rescale_acts_by_decoder_norm "
                             "divides by.")
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]

    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    source: dict[str, Any] = {
        "format": "saelens", "folder": path.name, "architecture": theirs,
        "hook_name": meta.get("hook_name", cfg.get("hook_name")),
        "sae_lens_version": meta.get("sae_lens_version", cfg.get("sae_lens_version")),
        "rescale_acts_by_decoder_norm_folded": rescale,
    }
    if cfg.get("matryoshka_widths"):
        source["matryoshka_widths"] = cfg["matryoshka_widths"]
    try:
        sae = create_sae(ours, d_in, d_sae, normalization=normalization, plm_model=plm_model, layer=layer,
                         source=source, **({"k": k} if k is not None else {}))
    except InputError as exc:
        raise InputError(f"{cfg_path}: {exc}") from exc
    saved = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    if "threshold" in t:
        saved["threshold"] = t["threshold"]
    sae.load_saved_weights({name: value.float() for name, value in saved.items()})
    return sae
