"""Import InterPLM (Simon & Zou) SAE state dicts, every architecture their repository trains, math unchanged.

Read from interplm/sae/dictionary.py (github.com/ElanaPearl/InterPLM: first release e868c76, v1.0.0
9cb2e89, current 5f4cbf9). nn.Linear weights are [out, in]: encoder.weight [F, D], decoder.weight [D, F].

ReLUSAE       bias [D], encoder.{weight,bias}, decoder.weight (also the first release's AutoEncoder)
              f = relu(enc(x - bias)); x^ = dec(f) + bias
ReLUSAE_Tied  encoder.{weight,bias}, decoder.{weight,bias}: f = relu(enc(x)); x^ = dec(f)
              (tied only at initialisation: both matrices are saved and trained)
JumpReLUSAE   encoder.*, decoder.* (biased), threshold [F]; v1.0.0: W_enc [D, F], b_enc, W_dec [F, D], b_dec,
              threshold. p = enc(x) (b_dec is never subtracted first); f = relu(p * (p > threshold))
TopKSAE       encoder.*, decoder.weight, b_dec [D], k, threshold []: f = top-k of relu(enc(x - b_dec))
BatchTopKSAE  the same tensors: at inference f = r * (r > threshold), r = relu(enc(x - b_dec))
all           activation_rescale_factor [F]; normalize_to_sqrt_d: x -> x / |x| * sqrt(D) before, undone after

TopK and BatchTopK state dicts are identical; the training config.yaml saved beside them (trainer_cfg:
TopKTrainerConfig has trainer_name, BatchTopKTrainerConfig has dead_feature_threshold) says which.

`activation_rescale_factor` (interplm/sae/normalize.py) is each feature's maximum activation over their
data; normalised features are f / factor, and a feature that never fired there gets 0 (their own division
would then give NaN). We fold 1 / factor into the encoder (ReLU, tied, JumpReLU and BatchTopK thresholds)
or, for TopK, whose top-k choice is made before the division, into a per-feature scale after it
(architecture topk_rescaled); the decoder takes the factor, so reconstructions do not change. A feature
with factor 0 is dead: its activations are 0 and its decoder row is 0. The first release folded the factor
into the weights itself: a dead feature there has a non-finite encoder row and a zero decoder column,
which we read as dead too.

Features are those of their `forward` (input normalised when normalize_to_sqrt_d), divided by the factor;
reconstructions are in the raw embedding space (their `forward(..., unnormalize=True)`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.importers import _check_finite, _check_shapes, _f32, _shape_error, _strip_prefix, read_tensor_file
from sae.model import SAE, create_sae
from storage.errors import InputError, NotFoundError

SAE_FILES = ("ae_normalized.pt", "ae.pt", "ae_unnormalized.pt", "checkpoint.pt")
CONFIG_FILE = "config.yaml"

# InterPLM class -> the tensors it saves (besides activation_rescale_factor and normalize_to_sqrt_d).
CLASS_TENSORS = {
    "ReLUSAE": ("bias", "encoder.weight", "encoder.bias", "decoder.weight"),
    "ReLUSAE_Tied": ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"),
    "JumpReLUSAE": ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "threshold"),
    "JumpReLUSAE (v1.0.0)": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "TopKSAE/BatchTopKSAE": ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"),
}


@dataclass
class _Weights:
    """An InterPLM SAE in our orientation: h = (x - b_dec) @ W_enc + b_enc, x^ = f @ W_dec + b_dec."""

    W_enc: torch.Tensor  # [D, F]
    b_enc: torch.Tensor
    W_dec: torch.Tensor  # [F, D]
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None  # [F] (JumpReLU, BatchTopK)


def interplm_file(path: Path) -> Path:
    """The SAE file itself, or the one inside a folder of theirs (a trained run, an HF layer_N folder)."""
    if path.is_dir():
        for name in SAE_FILES:
            if (path / name).exists():
                return path / name
        raise NotFoundError(f"{path} holds none of {', '.join(SAE_FILES)}.")
    return path


def import_interplm(path: str | Path, *, plm_model: str | None = None, layer: int | None = None) -> SAE:
    path = interplm_file(Path(path))
    tensors = read_tensor_file(path)
    anchor = "W_enc" if any(key.endswith("W_enc") for key in tensors) else "encoder.weight"
    tensors = _strip_prefix(tensors, anchor)
    cls = _interplm_class(path, tensors)
    _require_class(path, tensors, cls)
    weights, d_in, d_sae = _our_orientation(path, tensors, cls)
    legacy = ("encoder.weight", "encoder.bias") if cls == "ReLUSAE" else ()  # see _legacy_dead_features
    _check_finite(path, tensors, [name for name in CLASS_TENSORS[cls] if name not in legacy])
    dead_in_weights = _legacy_dead_features(path, tensors, weights) if cls == "ReLUSAE" else None
    factor = _rescale_factor(path, tensors, d_sae)
    architecture, k = _architecture(path, tensors, cls, d_sae)
    scale = None
    if factor is not None:
        if architecture == "topk":
            architecture, scale = "topk_rescaled", _inverse(factor)
            _fold_decoder(weights, factor)
        else:
            _fold_rescale(weights, factor)
    dead = int((factor == 0).sum()) if factor is not None else 0
    dead += int(dead_in_weights.sum()) if dead_in_weights is not None else 0
    sqrt_d = bool(tensors["normalize_to_sqrt_d"].item()) if "normalize_to_sqrt_d" in tensors else False
    source: dict[str, Any] = {"format": "interplm", "file": path.name, "class": cls,
                              "rescale_folded": factor is not None, "dead_features": dead}
    if cls.startswith("TopKSAE"):
        source["threshold"] = float(tensors["threshold"].float().reshape(-1)[0])
    sae = create_sae(
        architecture, d_in, d_sae, normalization="unit_norm" if sqrt_d else "none",
        plm_model=plm_model, layer=layer, source=source, **({"k": k} if k is not None else {}),
    )
    saved = {"W_enc": weights.W_enc, "b_enc": weights.b_enc, "W_dec": weights.W_dec, "b_dec": weights.b_dec}
    if weights.threshold is not None:
        saved["threshold"] = weights.threshold
    if scale is not None:
        saved["feature_scale"] = scale
    sae.load_saved_weights({name: value.contiguous() for name, value in saved.items()})
    return sae


# --- which class wrote the file -----------------------------------------------------------------------


def _interplm_class(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    keys = set(tensors)
    if "W_enc" in keys:
        return "JumpReLUSAE (v1.0.0)"
    if "encoder.weight" not in keys:
        raise InputError(
            f"{path} is not an InterPLM SAE state dict: no encoder.weight (nor W_enc); it holds "
            f"{_some(keys)}."
        )
    if "k" in keys or "b_dec" in keys or ("threshold" in keys and tensors["threshold"].dim() == 0):
        return "TopKSAE/BatchTopKSAE"  # their threshold is one number there, one per feature in JumpReLU
    if "threshold" in keys:
        return "JumpReLUSAE"
    if "decoder.bias" in keys:
        return "ReLUSAE_Tied"
    return "ReLUSAE"


def _require_class(path: Path, tensors: dict[str, torch.Tensor], cls: str) -> None:
    missing = [name for name in CLASS_TENSORS[cls] if name not in tensors]
    if missing:
        raise InputError(f"{path} looks like InterPLM's {cls} but has no tensor {', '.join(missing)}.")


def _some(keys: set[str]) -> str:
    names = sorted(keys)
    if not names:
        return "no tensors"
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _architecture(path: Path, tensors: dict[str, torch.Tensor], cls: str,
                  d_sae: int) -> tuple[str, int | None]:
    """Our architecture key (before rescaling) and k."""
    if cls in ("ReLUSAE", "ReLUSAE_Tied"):
        return "relu", None
    if cls.startswith("JumpReLUSAE"):
        return "jumprelu", None
    k_tensor = tensors["k"]
    if k_tensor.numel() != 1 or k_tensor.is_floating_point() or not 0 < int(k_tensor) <= d_sae:
        raise InputError(f"{path}: k must be one whole number between 1 and d_sae={d_sae}.")
    kind, config = _trainer_kind(path)
    if config is None:
        raise InputError(
            f"{path} is an InterPLM TopK or BatchTopK SAE (their state dicts are identical) and no "
            f"{CONFIG_FILE} of its training run lies beside it to say which; put it there."
        )
    if kind not in ("topk", "batchtopk"):
        said = f"a {kind} SAE" if kind else "no TopK or BatchTopK trainer"
        raise InputError(f"{config} says {said}, but {path.name} holds a TopK/BatchTopK state dict.")
    return kind, int(k_tensor)


def _config_folders(sae_file: Path) -> list[Path]:
    """Where their run keeps config.yaml: beside ae.pt, or above checkpoints/step_N/checkpoint.pt."""
    folders = [sae_file.parent]
    if sae_file.parent.parent.name == "checkpoints":
        folders.append(sae_file.parent.parent.parent)
    return folders


def _trainer_kind(sae_file: Path) -> tuple[str | None, Path | None]:
    for folder in _config_folders(sae_file):
        config = folder / CONFIG_FILE
        if config.is_file():
            return trainer_in_config(config.read_text(errors="replace")), config
    return None, None


def trainer_in_config(text: str) -> str | None:
    """relu / jumprelu / topk / batchtopk from the trainer_cfg block of their config.yaml, read as text.

    Their YAML is either plain (asdict) or tagged !!python/object:...; we never construct its objects.
    """
    block: list[str] = []
    for line in text.splitlines():
        if block and line.strip() and not line[0].isspace():
            break
        if block or line.startswith("trainer_cfg:"):
            block.append(line)
    body = "\n".join(block)
    if "BatchTopKTrainerConfig" in body:
        return "batchtopk"
    if "TopKTrainerConfig" in body or re.search(r"^\s+trainer_name:\s*['\"]?TopKTrainer\b", body, re.M):
        return "topk"
    keys = set(re.findall(r"^\s+([A-Za-z_][A-Za-z0-9_]*):", body, re.M))
    if "dead_feature_threshold" in keys:
        return "batchtopk"
    if "bandwidth" in keys or "JumpReLUTrainerConfig" in body:
        return "jumprelu"
    if "l1_penalty" in keys or "ReLUTrainerConfig" in body:
        return "relu"
    return None


# --- weights ----------------------------------------------------------------------------------------------


def _our_orientation(path: Path, tensors: dict[str, torch.Tensor], cls: str) -> tuple[_Weights, int, int]:
    if cls == "JumpReLUSAE (v1.0.0)":
        d_in, d_sae = tensors["W_enc"].shape
        _check_shapes(path, tensors, {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
                                      "threshold": (d_sae,)})
        weights = _Weights(*(_f32(tensors[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec")),
                           threshold=_f32(tensors["threshold"]))
        return _fold_input_bias(weights), int(d_in), int(d_sae)
    d_sae, d_in = tensors["encoder.weight"].shape
    shapes = {"encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae)}
    for name, shape in (("bias", (d_in,)), ("decoder.bias", (d_in,)), ("b_dec", (d_in,))):
        if name in CLASS_TENSORS[cls]:
            shapes[name] = shape
    if cls == "JumpReLUSAE":
        shapes["threshold"] = (d_sae,)
    _check_shapes(path, tensors, shapes)
    w_enc, b_enc, w_dec = _f32(tensors["encoder.weight"]).T, _f32(tensors["encoder.bias"]), \
        _f32(tensors["decoder.weight"]).T
    if cls == "ReLUSAE":
        return _Weights(w_enc, b_enc, w_dec, _f32(tensors["bias"])), int(d_in), int(d_sae)
    if cls.startswith("TopKSAE"):
        if tensors["threshold"].numel() != 1:
            raise _shape_error(path, "threshold", tensors["threshold"], ())
        threshold = torch.full((int(d_sae),), float(tensors["threshold"].float().reshape(-1)[0]))
        return _Weights(w_enc, b_enc, w_dec, _f32(tensors["b_dec"]), threshold), int(d_in), int(d_sae)
    threshold = _f32(tensors["threshold"]) if cls == "JumpReLUSAE" else None
    weights = _Weights(w_enc, b_enc, w_dec, _f32(tensors["decoder.bias"]), threshold)
    return _fold_input_bias(weights), int(d_in), int(d_sae)


def _fold_input_bias(weights: _Weights) -> _Weights:
    """Theirs: h = x @ W_enc + b_enc with the decoder bias only added after. Ours subtracts b_dec before the
    encoder, so b_enc' = b_enc + b_dec @ W_enc gives the same h."""
    weights.b_enc = weights.b_enc + weights.b_dec @ weights.W_enc
    return weights


def _legacy_dead_features(path: Path, tensors: dict[str, torch.Tensor], weights: _Weights) -> torch.Tensor:
    """First-release ae_normalized.pt: a feature whose max was 0 has encoder row / 0 (non-finite) and decoder
    column * 0 (all zeros). Those are dead; any other non-finite weight is refused by name."""
    bad = ~torch.isfinite(weights.W_enc).all(dim=0) | ~torch.isfinite(weights.b_enc)
    if not bad.any():
        return bad
    if not (weights.W_dec[bad] == 0).all():
        raise InputError(f"{path}: encoder.weight or encoder.bias contains NaN or infinite values.")
    weights.W_enc[:, bad] = 0.0
    weights.b_enc[bad] = 0.0
    return bad


def _rescale_factor(path: Path, tensors: dict[str, torch.Tensor], d_sae: int) -> torch.Tensor | None:
    """activation_rescale_factor when it rescales anything (their default buffer is all ones)."""
    factor = tensors.get("activation_rescale_factor")
    if factor is None:
        return None
    if tuple(factor.shape) != (d_sae,):
        raise _shape_error(path, "activation_rescale_factor", factor, (d_sae,))
    factor = _f32(factor)
    if not torch.isfinite(factor).all():
        raise InputError(f"{path}: activation_rescale_factor contains NaN or infinite values.")
    if (factor < 0).any():
        raise InputError(f"{path}: activation_rescale_factor has negative values (a maximum is >= 0).")
    return None if torch.equal(factor, torch.ones(d_sae)) else factor


def _inverse(factor: torch.Tensor) -> torch.Tensor:
    """1 / factor, and 0 where the factor is 0 (a dead feature)."""
    return torch.where(factor > 0, 1.0 / factor.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def _fold_decoder(weights: _Weights, factor: torch.Tensor) -> None:
    weights.W_dec = weights.W_dec * factor[:, None]  # dead (0): decoder row 0


def _fold_rescale(weights: _Weights, factor: torch.Tensor) -> None:
    """f / s = relu(h / s) for s > 0 (and h / s > t / s iff h > t): scale the encoder by 1 / s."""
    inverse = _inverse(factor)
    weights.W_enc = weights.W_enc * inverse
    weights.b_enc = weights.b_enc * inverse  # with b_dec folded: h' = (x - b_dec) @ W_enc' + b_enc' = h / s
    if weights.threshold is not None:
        weights.threshold = weights.threshold * inverse
    _fold_decoder(weights, factor)
