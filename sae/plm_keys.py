"""How a protein language model is named in stored data (saes.plm_model, SAE cfg.json, the embeddings
manifest): a hub name as it is; a checkpoint inside the workspace relative to the workspace folder (a
copied workspace uses its own copy); any other checkpoint by its absolute path."""

from __future__ import annotations

from pathlib import Path

from storage.paths import resolve_stored, stored_path


def plm_model_key(model: str, root: str | Path | None = None) -> str:
    """How a model is named in stored data: the hub name, or a checkpoint's path: relative to the
    workspace folder `root` when the checkpoint is inside it (so a copied workspace uses its own),
    else absolute."""
    from sae.plm import ESM2_MODELS

    if model in ESM2_MODELS:
        return model
    if root is None:
        return str(Path(model).expanduser().resolve())
    return stored_path(model, root)


def resolve_plm_model(key: str, root: str | Path) -> str:
    """What `load_esm` takes for a stored model key: the hub name, or the checkpoint's path now."""
    from sae.plm import ESM2_MODELS

    return key if key in ESM2_MODELS else str(resolve_stored(key, root))


def same_plm_model(stored: str | None, key: str, root: str | Path) -> bool:
    """Whether a stored model key (maybe absolute, from before keys were relative) names `key`.

    An absolute key that ends with the relative `key` is the same checkpoint in a workspace that was
    copied or moved since it was stored."""
    if stored is None or stored == key:
        return stored is not None
    if not Path(stored).is_absolute() or Path(key).is_absolute():
        return False
    return plm_model_key(stored, root) == key or Path(stored).as_posix().endswith("/" + key)
