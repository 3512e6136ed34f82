"""Blocks of proteins fanned out over Ray workers (`--ray [ADDRESS]`, the `plmlabel[ray]` extra).

The driver (the `plmlabel` process) plans the blocks (sae/stream.py), submits one Ray task per block
with at most `workers` in flight, and takes the results back *in block order*, so what it merges is
exactly what one process computing the same blocks would have computed. Each task runs ESM-2 (and
the SAE) on its worker's device (one GPU per task on a cluster with GPUs) and returns only what the
pass needs: a block's float16 embeddings (embed), its sparse per-protein maxima (index pass 1) or its
concept counts (concepts).

Workers load ESM-2 themselves (a hub name is fetched into each node's torch hub cache; a checkpoint
path must exist on every node) and keep it between tasks; the SAE's two files travel in Ray's object
store. A task whose worker dies is retried (`max_retries`); a block that still fails ends the run
with one line, and the caller leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from storage.errors import InputError, PlmlabelError

MAX_RETRIES = 2
_CACHE: dict[Any, Any] = {}  # worker side: loaded ESM-2 and SAEs, kept between tasks


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'plmlabel[ray]'.") from None
    return ray


class RayPool:
    """A Ray session (a running cluster at `address`, or a local one started for this run)."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise InputError("--workers must be at least 1.")
        self.address = address or None
        self.workers = workers
        self._started = False
        self.gpus = 0.0

    _signals: dict[int, Any] = {}

    def __enter__(self) -> RayPool:
        ray = _ray()
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if ray.is_initialized():  # the caller's own Ray session (a notebook, a test): used, left running
            self._size(ray)
            return self
        if self.address:
            _check_reachable(self.address)
        # ray.init installs its own SIGTERM handler and shutdown does not remove it: keep ours
        self._signals = _signal_handlers()
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # ConnectionError, RuntimeError, TimeoutError, ValueError ...
            where = f"at {self.address}" if self.address else "locally"
            raise InputError(f"could not start or reach Ray {where}: {_first_line(exc)}.") from None
        self._started = True
        self._size(ray)
        return self

    def _size(self, ray: Any) -> None:
        resources = ray.cluster_resources()
        self.gpus = float(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        if self.workers is None:
            self.workers = int(self.gpus) if self.gpus >= 1 else max(1, cpus // 4)
        self._cpus_per_task = max(1, cpus // self.workers) if self.gpus < 1 else 1

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False
            _restore_signal_handlers(self._signals)

    @property
    def device(self) -> str:
        """What a task asks for: the GPU Ray gives it, or the CPU."""
        return "cuda" if self.gpus >= 1 else "cpu"

    def put(self, value: Any) -> Any:
        return _ray().put(value)

    def map(self, function: Callable[..., Any], calls: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """function(*call) for each call on the workers; results in call order, `workers` in flight."""
        ray = _ray()
        options: dict[str, Any] = {"max_retries": MAX_RETRIES, "retry_exceptions": False}
        if self.gpus >= 1:
            options["num_gpus"] = 1
        else:
            options["num_cpus"] = self._cpus_per_task
        remote = ray.remote(**options)(function)
        pending: deque[tuple[int, Any]] = deque()
        calls = iter(enumerate(calls))
        assert self.workers is not None
        try:
            for number, call in calls:
                pending.append((number, remote.remote(*call)))
                if len(pending) >= self.workers:
                    yield self._get(*pending.popleft())
            while pending:
                yield self._get(*pending.popleft())
        finally:
            for _, ref in pending:
                ray.cancel(ref, force=True)

    def _get(self, number: int, ref: Any) -> Any:
        ray = _ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), PlmlabelError) else None
            if cause is not None:
                raise cause from None  # a user error met on a worker (a bad sequence, a width mismatch)
            raise PlmlabelError(f"block {number} failed on a Ray worker: {_first_line(exc)}.") from None
        except ray.exceptions.RayError as exc:
            raise PlmlabelError(f"block {number} failed on a Ray worker after {MAX_RETRIES} retries: "
                                f"{_first_line(exc)}.") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing listens (Ray itself would retry for minutes)."""
    import socket

    host_port = address.removeprefix("ray://").rsplit(":", 1)
    if len(host_port) != 2 or not host_port[1].isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host_port[0], int(host_port[1])), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"could not start or reach Ray at {address}: {exc.strerror or exc}.") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__).rstrip(".")[:300]


# --- what runs on a worker ------------------------------------------------------------------------------


def sae_files(directory: Path) -> dict[str, bytes]:
    """The SAE folder's files, to ship to workers."""
    return {entry.name: entry.read_bytes() for entry in Path(directory).iterdir() if entry.is_file()}


def worker_plm(model: str, device: str, dtype: str) -> Any:
    path = Path(model)
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None  # a rewritten file
    key = ("plm", model, device, dtype, stamp)
    if key not in _CACHE:
        from sae.plm import load_esm

        _CACHE[key] = load_esm(model, device=device, dtype=dtype)
    return _CACHE[key]


def worker_sae(files: dict[str, bytes], device: str) -> Any:
    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
    key = ("sae", digest, device)
    if key not in _CACHE:
        from sae.model import load_sae
        from sae.plm import resolve_device

        with tempfile.TemporaryDirectory(prefix="plmlabel-sae-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            _CACHE[key] = load_sae(tmp, device=resolve_device(device))
    return _CACHE[key]


def embed_task(model: str, device: str, dtype: str, layer: int, max_tokens: int,
               items: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """One block's float16 embeddings (for `embed --ray`)."""
    from sae.stream import embed_block

    return embed_block(worker_plm(model, device, dtype), items, layer, max_tokens)


def _plm_for(sae: Any, model: str, device: str, dtype: str) -> Any:
    """The worker's ESM-2, refused in one line when its width is not the SAE's."""
    plm = worker_plm(model, device, dtype)
    if plm.embed_dim != sae.d_in:
        raise InputError(f"the SAE takes embeddings of width {sae.d_in}, but {model} has width "
                         f"{plm.embed_dim}; use the SAE's model.")
    return plm


def maxima_task(model: str, device: str, dtype: str, layer: int, max_tokens: int, files: dict[str, bytes],
                max_elements: int, items: list[tuple[str, str]]) -> Any:
    """One block's index pass 1: sparse per-protein maxima and firing counts."""
    from sae.activations import sae_encoder
    from sae.index_build import iter_maxima, merge_maxima
    from sae.stream import embed_block

    sae = worker_sae(files, device)
    block = embed_block(_plm_for(sae, model, device, dtype), items, layer, max_tokens)
    return merge_maxima(iter_maxima(block, sae_encoder(sae), sae.d_sae, max_elements), sae.d_sae)


def concepts_task(model: str, device: str, dtype: str, layer: int, max_tokens: int, files: dict[str, bytes],
                  max_elements: int, scale: Any, n_concepts: int, items: list[tuple[str, str]],
                  wanted: dict[str, tuple[Any, int]]) -> dict[str, Any]:
    """One block's concept counts (sparse): `wanted` maps its indexed proteins to (concepts, split)."""
    from sae.activations import sae_encoder
    from sae.concepts import ConceptCounter, count_block
    from sae.stream import embed_block

    sae = worker_sae(files, device)
    block = embed_block(_plm_for(sae, model, device, dtype), items, layer, max_tokens)
    counter = ConceptCounter(n_concepts, sae.d_sae)
    count_block(counter, [item for item in block if item[0] in wanted], sae_encoder(sae), sae.d_sae,
                max_elements, scale, lambda pairs: {a: wanted[a] for a, _ in pairs})
    return counter.export()


def _signal_handlers() -> dict[int, Any]:
    """The current SIGTERM and SIGINT handlers (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)
