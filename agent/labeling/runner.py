"""One labeling run, either transport: the writer opens and closes the runs row, a transport feeds it.

    summary = await run_job(db, sae_id=..., features=..., labeler=..., load_examples=..., settings=...)
    summary = await run_job(..., batch=BatchSettings(wait=True))     # through the provider batch APIs

Whatever ends the run (done, a stop rule, an interrupt, an unexpected error) the runs row is closed
with what was stored, and the labeler's HTTP client is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

from agent.backends import Labeler
from agent.labeling.batch import BatchSettings, run_batch
from agent.labeling.examples import LoadExamples
from agent.labeling.summary import JobStart, JobSummary, ProgressEvent
from agent.labeling.sync import run_sync
from agent.labeling.writer import JobSettings, RunWriter
from storage.db import Database
from storage.errors import InputError, PlmlabelError
from storage.labels import RunStatus


async def run_job(
    db: Database,
    *,
    sae_id: str,
    features: Sequence[int],
    labeler: Labeler,
    load_examples: LoadExamples,
    settings: JobSettings,
    batch: BatchSettings | None = None,
    kind: str = "label",
    run_args: dict[str, Any] | None = None,
    n_skipped: int = 0,
    backend_reason: str | None = None,
    on_start: Callable[[JobStart], None] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> JobSummary:
    """Label `features` in one run (one runs row). Closes the labeler when done."""
    writer = RunWriter(
        db,
        sae_id=sae_id,
        kind=kind,
        labeler=labeler,
        settings=settings,
        n_requested=len(features),
        n_skipped=n_skipped,
        on_progress=on_progress,
        run_args={**(run_args or {}), **({"batch": True, "wait": batch.wait} if batch else {})},
        batch=batch is not None,
    )
    try:
        if batch is not None and not labeler.batch:
            raise InputError(
                f"--batch needs a provider with a batch API; the {labeler.name} backend has none."
            )
        writer.start()
    except PlmlabelError:
        await labeler.aclose()
        raise
    if on_start is not None:
        on_start(
            JobStart(
                run_id=writer.run_id,
                sae_id=sae_id,
                backend=labeler.name,
                model=labeler.model,
                backend_reason=backend_reason,
                n_features=len(features),
                n_skipped=n_skipped,
            )
        )
    status: RunStatus | None = None
    try:
        if batch is None:
            await run_sync(writer, labeler, features, load_examples, settings)
        else:
            await run_batch(
                writer, labeler, features, load_examples, settings, batch, on_event=on_event, sleep=sleep
            )
    except BaseException as exc:
        interrupted = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit)
        status = "interrupted" if interrupted else "failed"
        if not interrupted:
            writer.stop("failed", f"stopped by an unexpected error: {type(exc).__name__}: {exc}")
        raise
    finally:
        if db.db.conn.in_transaction:  # an interrupt landed between a BEGIN and its commit: undo that part
            db.db.conn.rollback()
        summary = writer.close(status, backend_reason=backend_reason)
        with suppress(Exception):
            await labeler.aclose()
    return summary.settle()
