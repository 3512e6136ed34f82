"""Import SAEs published by others into our format (see sae/model.py), math unchanged.

interplm   InterPLM (Simon & Zou) `ae_normalized.pt` / `ae.pt`: a torch state dict of their ReLU SAE:
           bias [d_in] (subtracted before the encoder, added after the decoder), encoder.weight
           [d_sae, d_in], encoder.bias [d_sae], decoder.weight [d_in, d_sae] (no decoder bias).
           features = relu((x - bias) @ encoder.weight.T + encoder.bias); recon = f @ decoder.weight.T + bias.
           `ae_normalized.pt` already has each feature's max activation over their Swiss-Prot set folded
           into the weights (encoder rows and bias divided by it, decoder columns multiplied), so its
           features lie in about [0, 1]. Newer files may instead carry `activation_rescale_factor`
           [d_sae] (features are divided by it when normalised): we fold it the same way, so our
           encode gives the normalised features and decode still reconstructs. `normalize_to_sqrt_d`
           (true in some newer files) becomes our per-token `unit_norm` normalisation.
interprot  InterProt (Adams et al.) safetensors (or .pt) of their SparseAutoencoder: w_enc [d_in, d_sae],
           b_enc [d_sae], w_dec [d_sae, d_in], b_pre [d_in], optionally prefixed `sae_model.`.
           Per-token x' = (x - mean) / (std + 1e-5) (unbiased std), latents = TopK_k(relu)
           ((x' - b_pre) @ w_enc + b_enc), recon = (latents @ w_dec + b_pre) * std + mean. k comes from
           the file name (`..._k64_...`) unless given.
saelens    A SAELens folder: see sae/import_saelens.py.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sae.embeddings import EmbeddingStore, store_path
from sae.import_saelens import import_saelens
from sae.model import (
    SAE,
    check_fits_layer,
    check_sae_id,
    create_sae,
    install_and_record,
    plm_model_key,
    read_weights,
    refuse_existing,
)
from storage.errors import InputError, NotFoundError
from storage.saes import SaeRecord
from storage.workspace import Workspace

FORMATS = ("interplm", "interprot", "saelens")


# --- reading files -----------------------------------------------------------------------------------


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch state dict (.pt/.ckpt, loaded with weights_only)."""
    if not path.exists():
        raise NotFoundError(f"no file at {path}.")
    if path.suffix == ".safetensors":
        return read_weights(path)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError... for anything not a state dict
        raise InputError(f"{path} is not a readable torch state dict ({_load_failure(exc)}).") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # a Lightning checkpoint
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a state dict.")
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}


def _load_failure(exc: Exception) -> str:
    """The reason torch.load gave, without its paragraphs of advice (re-run with weights_only=False, read
    the docs): not one sentence, and not advice for our users, who are not to unpickle arbitrary code."""
    if isinstance(exc, EOFError):
        return "the file ends early: empty or cut short"
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        first = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        reason = first.split(". ")[0].rstrip(".")
        return f"not a PyTorch file of tensors only: {reason}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0].removesuffix(".") if lines else type(exc).__name__


def _strip_prefix(tensors: dict[str, torch.Tensor], anchor: str) -> dict[str, torch.Tensor]:
    """Drop a module prefix ("sae_model.", "ae.") found in front of `anchor`."""
    for key in tensors:
        if key.endswith(anchor) and key != anchor:
            prefix = key[: -len(anchor)]
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


def _require(tensors: dict[str, torch.Tensor], names: list[str], path: Path, layout: str) -> None:
    missing = [name for name in names if name not in tensors]
    if missing:
        raise InputError(f"{path} is not in {layout}'s layout: no tensor {', '.join(missing)}.")


def _shape_error(path: Path, name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> InputError:
    return InputError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {expected}.")


def _check_shapes(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise _shape_error(path, name, tensors[name], shape)


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous()


@torch.no_grad()
def _assign(sae: SAE, **tensors: torch.Tensor) -> SAE:
    for name, value in tensors.items():
        getattr(sae, name).copy_(value)
    return sae


# --- InterPLM ------------------------------------------------------------------------------------------


def _interplm_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("ae_normalized.pt", "ae.pt"):
            if (path / name).exists():
                return path / name
        raise NotFoundError(f"{path} holds no ae_normalized.pt or ae.pt.")
    return path


def import_interplm(path: str | Path, *, plm_model: str | None = None, layer: int | None = None) -> SAE:
    path = _interplm_file(Path(path))
    tensors = _strip_prefix(read_tensor_file(path), "encoder.weight")
    if "b_dec" in tensors or "k" in tensors:
        raise InputError(
            f"{path} is an InterPLM TopK/BatchTopK checkpoint; only their ReLU SAE (keys bias, "
            "encoder.weight, encoder.bias, decoder.weight) is supported."
        )
    _require(tensors, ["bias", "encoder.weight", "encoder.bias", "decoder.weight"], path, "InterPLM")
    d_sae, d_in = tensors["encoder.weight"].shape
    _check_shapes(path, tensors, {"bias": (d_in,), "encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae)})
    w_enc = _f32(tensors["encoder.weight"]).T  # [d_in, d_sae]
    b_enc = _f32(tensors["encoder.bias"])
    w_dec = _f32(tensors["decoder.weight"]).T  # [d_sae, d_in]
    rescale = tensors.get("activation_rescale_factor")
    rescaled = rescale is not None and not torch.allclose(_f32(rescale), torch.ones(d_sae))
    if rescaled:
        assert rescale is not None
        if tuple(rescale.shape) != (d_sae,):
            raise _shape_error(path, "activation_rescale_factor", rescale, (d_sae,))
        factor = _f32(rescale)
        if not (factor > 0).all():
            raise InputError(f"{path}: activation_rescale_factor has values <= 0.")
        w_enc, b_enc, w_dec = w_enc / factor, b_enc / factor, w_dec * factor[:, None]
    sqrt_d = bool(tensors["normalize_to_sqrt_d"].item()) if "normalize_to_sqrt_d" in tensors else False
    sae = create_sae(
        "relu", int(d_in), int(d_sae), normalization="unit_norm" if sqrt_d else "none",
        plm_model=plm_model, layer=layer,
        source={"format": "interplm", "file": path.name, "rescale_folded": rescaled},
    )
    return _assign(sae, W_enc=w_enc, b_enc=b_enc, W_dec=w_dec, b_dec=_f32(tensors["bias"]))


# --- InterProt -----------------------------------------------------------------------------------------

_INTERPROT_K = re.compile(r"(?:^|[_\-])k(\d+)(?=[_\-.]|$)")


def import_interprot(path: str | Path, *, plm_model: str | None = None, layer: int | None = None,
                     k: int | None = None) -> SAE:
    path = Path(path)
    tensors = _strip_prefix(read_tensor_file(path), "w_enc")
    _require(tensors, ["w_enc", "b_enc", "w_dec", "b_pre"], path, "InterProt")
    d_in, d_sae = tensors["w_enc"].shape
    _check_shapes(path, tensors, {"b_enc": (d_sae,), "w_dec": (d_sae, d_in), "b_pre": (d_in,)})
    if k is None:
        match = _INTERPROT_K.search(path.stem)
        if match is None:
            raise InputError(
                f"the InterProt file name {path.name} does not say k (as in ..._k64_...); pass --k."
            )
        k = int(match.group(1))
    if not 0 < k <= d_sae:
        raise InputError(f"k={k} must be between 1 and d_sae={d_sae}.")
    sae = create_sae(
        "topk", int(d_in), int(d_sae), k=k, normalization="layer_norm", plm_model=plm_model, layer=layer,
        source={"format": "interprot", "file": path.name},
    )
    return _assign(sae, W_enc=_f32(tensors["w_enc"]), b_enc=_f32(tensors["b_enc"]),
                   W_dec=_f32(tensors["w_dec"]), b_dec=_f32(tensors["b_pre"]))


IMPORTERS: dict[str, Callable[..., SAE]] = {
    "interplm": import_interplm,
    "interprot": import_interprot,
    "saelens": import_saelens,
}


def import_sae(path: str | Path, fmt: str, *, plm_model: str | None = None, layer: int | None = None,
               k: int | None = None) -> SAE:
    """Read an SAE published in `fmt` (interplm, interprot, saelens) as one of ours, in eval mode."""
    if fmt not in IMPORTERS:
        raise InputError(f"unknown SAE format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if k is not None and fmt != "interprot":
        raise InputError("--k applies to InterProt files only (the others say k themselves).")
    kwargs: dict[str, Any] = {"plm_model": plm_model, "layer": layer}
    if fmt == "interprot":
        kwargs["k"] = k
    sae = IMPORTERS[fmt](path, **kwargs)
    for name, tensor in sae.weights_for_saving().items():
        if not torch.isfinite(tensor).all():
            raise InputError(f"{path}: weight {name} contains NaN or infinite values.")
    return sae.eval()


def import_into_workspace(workspace: Workspace, path: str | Path, fmt: str, sae_id: str, *,
                          model: str, layer: int, k: int | None = None, force: bool = False) -> SaeRecord:
    """Import an SAE file/folder as `saes/<sae_id>/` and record it (source "imported:<fmt>").

    The SAE's d_in must be the width of `model` (hub models: known widths; checkpoint paths: the width
    of the workspace's embeddings of that model and layer, when there are some).
    """
    check_sae_id(sae_id)
    refuse_existing(workspace, sae_id, force)
    key = plm_model_key(model, workspace.root)
    sae = import_sae(path, fmt, plm_model=key, layer=layer, k=k)
    store = EmbeddingStore(store_path(workspace.embeddings_dir, key, layer))
    check_fits_layer(sae.cfg, model, layer, store.d_model if store.exists else None)
    return install_and_record(workspace, sae_id, sae, source=f"imported:{fmt}")
