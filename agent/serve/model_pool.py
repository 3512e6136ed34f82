"""ESM-2 and an SAE, loaded once per SAE and shared by every request.

Loading takes seconds (and gigabytes for a large ESM-2), so it must happen once however many requests
arrive together: `ModelPool.get` loads under one lock, and a request that arrives while another is
loading waits for that load instead of starting its own. Running the models is serialised by a second
lock (torch already spreads one forward pass over every core; two at once only thrash), and callers run
`activations` in a worker thread (`starlette.concurrency.run_in_threadpool`), never on the event loop.
Recent results are kept (LRU, bounded in count and bytes) so opening one feature of a pasted sequence
does not rerun the model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.workspace import Workspace


@dataclass
class LoadedModels:
    """What one SAE needs to read a sequence: its ESM-2, the layer it reads, and the SAE."""

    plm: Any  # sae.plm.LoadedPLM
    sae: Any  # sae.model.SAE
    layer: int
    max_tokens: int = 4096


Loader = Callable[[str], LoadedModels]


def workspace_loader(workspace: Workspace) -> Loader:
    """Load the ESM-2 and SAE that SAE `sae_id` of `workspace` was made with (its model and layer)."""

    def load(sae_id: str) -> LoadedModels:
        from agent.serve.readonly_db import read_only_database
        from sae.index import sae_directory
        from sae.model import load_sae
        from sae.plm import load_esm, resolve_device
        from sae.plm_keys import resolve_plm_model
        from storage.saes import get_sae

        settings = workspace.load_config()
        with read_only_database(workspace.db_path) as db:
            record = get_sae(db, sae_id)
        layer = record.layer if record.layer is not None else settings.plm.layer
        device = resolve_device(settings.plm.device)
        model = resolve_plm_model(record.plm_model or settings.plm.model, workspace.root)
        plm = load_esm(model, device=str(device), dtype=settings.plm.dtype)
        sae = load_sae(sae_directory(workspace, record), device=device)
        return LoadedModels(plm=plm, sae=sae.eval(), layer=layer, max_tokens=settings.plm.max_tokens)

    return load


class ModelPool:
    """Models per SAE id, loaded on first use by exactly one thread; results of recent sequences kept."""

    def __init__(self, loader: Loader, *, cache_size: int = 32, cache_bytes: int = 256 << 20) -> None:
        self._loader = loader
        self._models: dict[str, LoadedModels] = {}
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes  # a 2,000-residue paste on 10,240 features is 82 MB
        self.loads = 0  # how many times the loader ran (tests and the bench read it)

    def get(self, sae_id: str) -> LoadedModels:
        models = self._models.get(sae_id)
        if models is not None:
            return models
        with self._load_lock:
            models = self._models.get(sae_id)  # loaded by the thread that held the lock before us
            if models is None:
                self.loads += 1
                models = self._loader(sae_id)
                self._models[sae_id] = models
        return models

    def activations(self, sae_id: str, sequence: str) -> np.ndarray:
        """float32 [len(sequence), d_sae]: the SAE's features on each residue of `sequence`."""
        key = (sae_id, sequence)
        models = self.get(sae_id)
        with self._run_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            result = compute_activations(models, sequence)
            self._cache[key] = result
            while len(self._cache) > 1 and (len(self._cache) > self._cache_size or sum(
                    a.nbytes for a in self._cache.values()) > self._cache_bytes):
                self._cache.popitem(last=False)
        return result


def compute_activations(models: LoadedModels, sequence: str) -> np.ndarray:
    """ESM-2's layer on `sequence` (windowed past 1,022 residues), then the SAE on every residue."""
    from sae.activations import sae_encoder
    from sae.plm import embed_sequences

    ((_, embedding),) = list(embed_sequences(models.plm, [("pasted", sequence)], models.layer,
                                             models.max_tokens))
    activations = sae_encoder(models.sae)(embedding)
    return np.asarray(activations, dtype=np.float32)
