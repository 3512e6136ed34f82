"""Import InterProt (Adams, Bai et al.) SAEs: their safetensors / .pt state dicts and Lightning .ckpt files.

Their SparseAutoencoder (interprot/sae_model.py, github.com/etowahadams/interprot at 287c373): w_enc [D, F],
b_enc [F], w_dec [F, D], b_pre [D], buffer stats_last_nonzero [F]. Per token:
    x' = (x - mean) / (std + 1e-5)  (unbiased std);  pre = (x' - b_pre) @ w_enc + b_enc
    latents = top-k of pre with ReLU on the kept values;  x^ = (latents @ w_dec + b_pre) * std + mean
which is our `topk` with normalization `layer_norm`.

Their training (interprot/training.py, sae_module.py) is a Lightning module that keeps the SAE as
`sae_model` and saves its argparse Namespace as hyper-parameters: a .ckpt holds
{"state_dict": {"sae_model.w_enc": ...}, "hyper_parameters": {"args": Namespace(k=..., d_hidden=...)}, ...}.
Their viewer tooling (make_viz_files) reads such files by stripping "sae_model.". We load them with
torch.load(weights_only=True) allowing argparse.Namespace and no other global.

k, first that applies: --k; the checkpoint's hyper-parameters; the file name (`..._k64_...`, as
training.py names runs); the table of published files below. Otherwise the file is refused with the k
values that are plausible, since a wrong k gives features without any error.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.importers import (
    _check_finite,
    _check_shapes,
    _f32,
    _require,
    _strip_prefix,
    load_torch_file,
    read_weights,
)
from sae.model import SAE, create_sae
from storage.errors import InputError, NotFoundError

# The one global their checkpoints need beyond tensors and plain containers: the hyper-parameters.
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

_K_IN_NAME = re.compile(r"(?:^|[_\-])k(\d+)(?=[_\-.]|$)")

_REPO = "github.com/etowahadams/interprot"
_SAECONFIGS = f"{_REPO} viz/src/SAEConfigs.ts (since 285ad51)"


@dataclass(frozen=True)
class Release:
    d_in: int
    d_sae: int
    k: int
    source: str


def _layer_sweep(layer: int) -> Release:
    return Release(1280, 4096, 64, f"{_SAECONFIGS}: its huggingFaceModelName esm2_plm1280_l{layer}_sae4096"
                                   f".safetensors shows 4096_layer_sweep/esm2_plm1280_l{layer}_sae4096"
                                   "_k64_auxk640, a run named by training.py's k and auxk")


_ORIGINAL_L24 = Release(1280, 4096, 128, f"{_SAECONFIGS}: SAE4096-L24 (storagePath "
                                         "esm2_plm1280_l24_sae4096_100Kseqs), 'our original SAE4096-L24 ... "
                                         "K=128' in commit 23bc7dc; autointerp/results/"
                                         "l24_plm1280_sae4096_k128_100k")

# Published files (huggingface.co/liambai/InterProt-ESM2-SAEs) whose names do not say k: stem -> release.
KNOWN_RELEASES: dict[str, Release] = {
    **{f"esm2_plm1280_l{layer}_sae4096": _layer_sweep(layer) for layer in (4, 8, 12, 16, 20, 28, 32, 33)},
    "esm2_plm1280_l24_sae4096_100k": _ORIGINAL_L24,
    "esm2_plm1280_l24_sae4096_100Kseqs": _ORIGINAL_L24,  # the same SAE as the .pt their viewer used
}

# Published files whose k the sources do not settle: stem -> the candidates, each with why.
AMBIGUOUS_RELEASES: dict[str, tuple[tuple[int, str], ...]] = {
    "esm2_plm1280_l24_sae4096": (
        (64, "the layer-sweep run at layer 24 (4096_layer_sweep/esm2_plm1280_l24_sae4096_k64_auxk640, "
             "commit 23bc7dc), which the other esm2_plm1280_l<N>_sae4096 files are"),
        (128, "what their notebooks/sae_inference.ipynb loads it with (SparseAutoencoder's default k)"),
    ),
}

# Every k their code and releases use: training.py's default 128, the layer sweep's 64, the k sweep's.
PLAUSIBLE_K = (16, 32, 64, 128, 256)


def import_interprot(path: str | Path, *, plm_model: str | None = None, layer: int | None = None,
                     k: int | None = None) -> SAE:
    path = Path(path)
    tensors, hparams = _read(path)
    tensors = _strip_prefix(tensors, "w_enc")
    _require(tensors, ["w_enc", "b_enc", "w_dec", "b_pre"], path, "InterProt")
    d_in, d_sae = (int(n) for n in tensors["w_enc"].shape)
    _check_shapes(path, tensors, {"b_enc": (d_sae,), "w_dec": (d_sae, d_in), "b_pre": (d_in,)})
    _check_finite(path, tensors, ["w_enc", "b_enc", "w_dec", "b_pre"])
    k, k_from = _choose_k(path, k, hparams, d_in, d_sae)
    if not 0 < k <= d_sae:
        raise InputError(f"{path}: k={k} must be between 1 and d_sae={d_sae}.")
    source: dict[str, Any] = {"format": "interprot", "file": path.name, "k_from": k_from}
    if hparams:
        source["hyper_parameters"] = {key: hparams[key] for key in _HPARAMS_KEPT if key in hparams}
    sae = create_sae(
        "topk", d_in, d_sae, k=k, normalization="layer_norm", plm_model=plm_model, layer=layer,
        source=source,
    )
    sae.load_saved_weights({"W_enc": _f32(tensors["w_enc"]), "b_enc": _f32(tensors["b_enc"]),
                            "W_dec": _f32(tensors["w_dec"]), "b_dec": _f32(tensors["b_pre"])})
    return sae


_HPARAMS_KEPT = ("k", "auxk", "d_model", "d_hidden", "layer_to_use", "batch_size", "lr", "model_suffix")


# --- reading -------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, plain hyper-parameters) of a safetensors file, a state dict or a Lightning checkpoint."""
    if not path.exists():
        raise NotFoundError(f"no file at {path}.")
    if path.suffix == ".safetensors":
        return read_weights(path), {}
    data = load_torch_file(path, ALLOWED_GLOBALS)
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a state dict.")
    hparams: dict[str, Any] = {}
    if "state_dict" in data:  # a Lightning checkpoint
        hparams = _hyper_parameters(path, data.get("hyper_parameters"))
        data = data["state_dict"]
        if not isinstance(data, dict):
            raise InputError(f"{path}: the checkpoint's state_dict is not a dict of tensors.")
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}, hparams


def _hyper_parameters(path: Path, raw: Any) -> dict[str, Any]:
    """Lightning's hyper_parameters: {"args": Namespace} (their save_hyperparameters()) or a flat dict."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: hyper_parameters is a {type(raw).__name__}, not a dict.")
    args = raw.get("args")
    flat = vars(args) if isinstance(args, argparse.Namespace) else raw
    return {key: value for key, value in flat.items()
            if isinstance(key, str) and isinstance(value, (str, int, float, bool, type(None)))}


# --- k ---------------------------------------------------------------------------------------------------


def _choose_k(path: Path, k: int | None, hparams: dict[str, Any], d_in: int,
              d_sae: int) -> tuple[int, str]:
    """k and where it came from; InputError on contradictions and when nothing says it."""
    from_hparams = _hparams_k(path, hparams)
    match = _K_IN_NAME.search(path.stem)
    from_name = int(match.group(1)) if match else None
    if k is not None:
        if from_hparams is not None and from_hparams != k:
            raise InputError(f"--k {k} contradicts {path.name}, whose hyper-parameters say k={from_hparams}.")
        return k, "--k"
    if from_hparams is not None:
        if from_name is not None and from_name != from_hparams:
            raise InputError(
                f"{path.name} says k{from_name} in its name but k={from_hparams} in its hyper-parameters; "
                "pass --k."
            )
        return from_hparams, "hyper_parameters"
    if from_name is not None:
        return from_name, "file name"
    release = KNOWN_RELEASES.get(path.stem)
    if release is not None and (release.d_in, release.d_sae) == (d_in, d_sae):
        return release.k, f"published release ({release.source})"
    candidates = AMBIGUOUS_RELEASES.get(path.stem)
    if candidates is not None:
        said = "; ".join(f"k={value}: {why}" for value, why in candidates)
        raise InputError(f"{path.name} is an InterProt release whose k is not certain ({said}); pass --k.")
    raise InputError(
        f"the InterProt file {path.name} does not say k (no hyper-parameters, no ..._k64_... in the name, "
        f"not a known release); pass --k: InterProt trained k={', '.join(map(str, PLAUSIBLE_K))} "
        "(64 for its layer sweep, 128 its default)."
    )


def _hparams_k(path: Path, hparams: dict[str, Any]) -> int | None:
    value = hparams.get("k")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{path}: the hyper-parameter k={value!r} is not a whole number.")
    return value
