"""Import SAEs published by others into our format (see sae/model.py), math unchanged.

This module holds the dispatch and the helpers the importers share.

interplm   InterPLM (Simon & Zou) state dicts, every class their repository trains: sae/import_interplm.py.
interprot  InterProt (Adams et al.) safetensors, .pt and Lightning .ckpt files: sae/import_interprot.py.
saelens    A SAELens folder: sae/import_saelens.py.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sae.embeddings import EmbeddingStore, store_path
from sae.import_saelens import import_saelens
from sae.model import (
    SAE,
    check_fits_layer,
    check_sae_id,
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


def load_torch_file(path: Path, allowed_globals: Sequence[type] = ()) -> Any:
    """torch.load with weights_only (tensors, containers and plain values), plus exactly `allowed_globals`
    (e.g. argparse.Namespace for Lightning hyper-parameters); a pickle wanting anything else is refused."""
    if not path.exists():
        raise NotFoundError(f"no file at {path}.")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed_globals)):
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of files it then refuses
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError... for anything not a state dict
        raise InputError(f"{path} is not a readable torch state dict ({_load_failure(exc)}).") from exc


def read_tensor_file(path: Path, allowed_globals: Sequence[type] = ()) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch state dict (.pt/.ckpt, loaded with weights_only)."""
    if not path.exists():
        raise NotFoundError(f"no file at {path}.")
    if path.suffix == ".safetensors":
        return read_weights(path)
    data = load_torch_file(path, allowed_globals)
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
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked", text)
    if blocked:
        return (f"not a PyTorch file of tensors only: Unsupported global: GLOBAL {blocked[1]} "
                f"(module {blocked[2]})")
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


def _check_finite(path: Path, tensors: dict[str, torch.Tensor], names: Sequence[str]) -> None:
    for name in names:
        tensor = tensors[name]
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(f"{path}: {name} contains NaN or infinite values.")


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous()


def importers() -> dict[str, Callable[..., SAE]]:
    """Format -> importer. Imported here, not at the top: those modules use this one's helpers."""
    from sae.import_interplm import import_interplm
    from sae.import_interprot import import_interprot

    return {"interplm": import_interplm, "interprot": import_interprot, "saelens": import_saelens}


def import_sae(path: str | Path, fmt: str, *, plm_model: str | None = None, layer: int | None = None,
               k: int | None = None) -> SAE:
    """Read an SAE published in `fmt` (interplm, interprot, saelens) as one of ours, in eval mode."""
    if fmt not in FORMATS:
        raise InputError(f"unknown SAE format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if k is not None and fmt != "interprot":
        raise InputError("--k applies to InterProt files only (the others say k themselves).")
    kwargs: dict[str, Any] = {"plm_model": plm_model, "layer": layer}
    if fmt == "interprot":
        kwargs["k"] = k
    sae = importers()[fmt](path, **kwargs)
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
