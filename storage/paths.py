"""Paths the workspace stores about itself are relative to its folder, so a copied or moved workspace
reads its own files (never the original's), and exports show a model's name, never a local path.

    stored_path(path, root)      what to store: relative with / separators inside `root`, else absolute
    resolve_stored(stored, root) where it is now: relative paths are read against `root`
    model_display_name(model)    a hub name as it is; a checkpoint path as its file name
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath


def stored_path(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """`path` as the workspace at `root` stores it: relative when inside `root`, else absolute."""
    absolute = Path(path).expanduser().absolute()
    base = Path(root).expanduser().absolute()
    for candidate, folder in ((absolute, base), (absolute.resolve(), base.resolve())):
        if candidate.is_relative_to(folder):
            return candidate.relative_to(folder).as_posix() or "."
    return str(absolute.resolve())


def resolve_stored(stored: str, root: str | os.PathLike[str]) -> Path:
    """Where a stored path is now: a relative one is read against the workspace folder `root`."""
    path = Path(stored)
    return path if path.is_absolute() else Path(root) / path


def is_path_like(model: str) -> bool:
    return "/" in model or "\\" in model or model.endswith(".pt")


def model_display_name(model: str | None) -> str | None:
    """What exports and viewers show for a model: the hub name, or a checkpoint's file name."""
    if model is None or not is_path_like(model):
        return model
    return PureWindowsPath(model).name if "\\" in model else PurePosixPath(model).name
