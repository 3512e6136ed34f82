"""`plmlabel label SAE_ID --nightly`: label what is new or stale, unattended, within a budget.

    select_nightly(db, sae_id, model=..., prompt_versions=..., relabel_stale=...) -> NightlySelection
    nightly(workspace, NightlyOptions) -> NightlySummary      the whole run, as the command calls it
    exit_code(summary) -> int                                 what a scheduler should see

What a nightly run labels, in this order (a budget stops it partway, and the next run goes on):
1. new: indexed features that fire on some protein and have no label yet;
2. failed before: features whose stored attempt failed (provider errors, malformed answers, expired
   batch requests...), so a failure is retried the next night;
3. only with `relabel_stale`: ok labels made with another explain or simulate prompt version, or
   another model, than this run's.
Features that never fire (dead) are not labeled; features with a request in a provider batch still
in flight are left to the batch run that collects them. Two runs in a row: the second finds nothing
to do, sends nothing and costs $0 (its runs row says 0 labeled).

The run holds the workspace lock throughout (storage.lock): a second job, nightly or not, is refused
at once with one line and exit code 4, before it changes anything. Under the lock no other job runs,
so runs rows still 'running' were left by a killed job; they are marked 'interrupted' first. Each run
leaves one runs row (kind "nightly") and a one-line summary (`NightlySummary.line`). With
`batch` set the work goes through the providers' batch APIs (agent/batch.py): collect what has
ended, submit what is new, return (or wait).

Exit codes (`exit_code`; plain `plmlabel label` uses the same):
    0    all selected work done, or nothing to do (with --batch: everything it could submit or
         collect is; work still in flight at the provider is normal)
    1    some features failed (their reasons are stored; the next run retries them), or the provider
         kept failing and the run stopped
    2    usage or input error: bad flags, unknown SAE, no index, missing API key, bad config
    3    the budget ran out with work left (the next run continues where this one stopped)
    4    another job holds the workspace lock; nothing was done
    130  interrupted (Ctrl-C, SIGTERM); everything stored stays, the next run continues
Failures take precedence over an exhausted budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from agent import job as labeling
from agent.backends import BACKENDS, Labeler
from agent.batch import BatchSettings, BatchSummary, run_batch_job
from agent.job import (
    JobStart,
    JobSummary,
    LoadExamples,
    ProgressEvent,
    ResolvedJob,
    indexed_features,
    interrupted_note,
    labeling_lock,
    resolve_job,
    run_job,
)
from agent.llm import RetryPolicy
from storage.db import Database
from storage.errors import InputError
from storage.labels import in_flight_features, label_states, stale_features
from storage.workspace import Workspace

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class NightlySelection:
    new: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)  # failed before
    stale: list[int] = field(default_factory=list)
    up_to_date: int = 0  # live features with a current ok label
    dead: int = 0  # indexed features that never fire
    in_flight: int = 0  # selected otherwise, but a provider batch has them

    @property
    def features(self) -> list[int]:
        return [*self.new, *self.retry, *self.stale]


def select_nightly(
    db: Database,
    sae_id: str,
    *,
    model: str,
    prompt_versions: Mapping[str, str | None],
    relabel_stale: bool = False,
    in_flight: set[int] | None = None,
) -> NightlySelection:
    """What a nightly run of `model` with these prompt versions labels (see the module docstring)."""
    stats = indexed_features(db, sae_id)
    live = {f for f, (peak, _) in stats.items() if peak > 0}
    states = label_states(db, sae_id)
    stale: set[int] = set()
    if relabel_stale:
        stale = stale_features(db, sae_id, explain_prompt_version=prompt_versions.get("explain"),
                               simulate_prompt_version=prompt_versions.get("simulate"), model=model)
    busy = in_flight or set()
    new, retry, old = [], [], []
    for feature in sorted(live):
        state = states.get(feature)
        if state is None:
            new.append(feature)
        elif state.status != "ok":
            retry.append(feature)
        elif feature in stale:
            old.append(feature)
    n_busy = sum(1 for f in (*new, *retry, *old) if f in busy)
    return NightlySelection(
        new=[f for f in new if f not in busy], retry=[f for f in retry if f not in busy],
        stale=[f for f in old if f not in busy],
        up_to_date=sum(1 for f in live if f in states and states[f].status == "ok" and f not in stale),
        dead=len(stats) - len(live), in_flight=n_busy,
    )


class NightlyOptions(BaseModel):
    """One `plmlabel label SAE_ID --nightly` invocation. None means: the workspace config's value."""

    sae_id: str
    relabel_stale: bool = False
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    concurrency: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    batch: BatchSettings | None = None  # None: synchronous calls


class NightlySummary(BatchSummary):
    kind: str = "nightly"
    batch: bool = False
    n_new: int = 0
    n_retry: int = 0
    n_stale: int = 0
    n_dead: int = 0
    exit_code: int = EXIT_OK
    line: str = ""


def exit_code(summary: JobSummary) -> int:
    """The process exit code for a finished (or stopped) job; see the module docstring."""
    if summary.status == "interrupted":
        return EXIT_INTERRUPTED
    if not summary.ok:
        return EXIT_FAILED
    if summary.status == "budget_exhausted" and summary.n_not_started > 0:
        return EXIT_BUDGET
    return EXIT_OK


def summary_line(summary: JobSummary, kind: str = "nightly") -> str:
    """`nightly demo: 12 labeled (9 validated), 1 failed, 0 left, $0.3100, run ...` (one line)."""
    parts = [f"{summary.n_labeled} labeled ({summary.n_validated} validated)", f"{summary.n_failed} failed",
             f"{summary.n_not_started} left"]
    batched = isinstance(summary, BatchSummary) and getattr(summary, "batch", True)
    if isinstance(summary, BatchSummary) and batched:
        parts += [f"submitted {summary.n_submitted}", f"in flight {summary.n_in_flight}"]
    parts.append("cost unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}")
    parts.append(f"run {summary.run_id}")
    line = f"{kind} {summary.sae_id}{' (batch)' if batched else ''}: " + ", ".join(parts)
    if summary.status != "completed":
        line += f" [{summary.status.replace('_', ' ')}]"
    return line


def nightly(
    workspace: Workspace,
    options: NightlyOptions,
    *,
    load_examples: LoadExamples | None = None,
    on_start: Callable[[JobStart], None] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    retry: RetryPolicy | None = None,
) -> NightlySummary:
    """One nightly run under the workspace lock (LockedError when another job holds it)."""
    job = resolve_job(workspace, backend=options.backend, model=options.model, base_url=options.base_url,
                      concurrency=options.concurrency, budget_usd=options.budget_usd, retry=retry)
    if options.batch is not None and BACKENDS[job.backend].key_env is None:
        raise InputError("--batch needs an LLM backend (anthropic or openai); the baseline calls no "
                         "provider.")
    labeler = job.labeler()  # a missing key fails here, before the lock is taken or anything is written
    try:
        return _run(workspace, options, job, labeler, load_examples=load_examples, on_start=on_start,
                    on_progress=on_progress, on_event=on_event)
    finally:
        asyncio.run(labeler.aclose())  # the runners close it too; closing twice is harmless


def _run(
    workspace: Workspace, options: NightlyOptions, job: ResolvedJob, labeler: Labeler, *,
    load_examples: LoadExamples | None, on_start: Callable[[JobStart], None] | None,
    on_progress: Callable[[ProgressEvent], None] | None, on_event: Callable[[str], None] | None,
) -> NightlySummary:
    sae_id = options.sae_id
    with labeling_lock(workspace, f"nightly {sae_id}") as interrupted, workspace.db() as db:
        busy = in_flight_features(db, sae_id)
        selection = select_nightly(db, sae_id, model=labeler.model, prompt_versions=labeler.prompt_versions,
                                   relabel_stale=options.relabel_stale, in_flight=busy)
        loader = load_examples or labeling.index_loader(workspace, db, sae_id)
        if selection.features:
            loader(selection.features[0])  # no usable index: one clear error now, before any run row
        features = selection.features
        run_args = job.run_args(labeler, nightly=True, relabel_stale=options.relabel_stale,
                                selected={"new": len(selection.new), "failed_before": len(selection.retry),
                                          "stale": len(selection.stale)})
        if on_start is not None:
            on_start(JobStart(sae_id=sae_id, backend=labeler.name, model=labeler.model,
                              backend_reason=job.backend_reason, n_features=len(features),
                              n_skipped=selection.up_to_date))
        summary: JobSummary
        if options.batch is not None:
            summary = asyncio.run(run_batch_job(
                db, sae_id=sae_id, features=features, labeler=labeler, load_examples=loader,
                settings=job.settings, batch=options.batch, run_args=run_args, kind="nightly",
                n_skipped=selection.up_to_date, on_event=on_event, backend_reason=job.backend_reason,
            ))
        else:
            summary = asyncio.run(run_job(
                db, sae_id=sae_id, features=features, labeler=labeler, load_examples=loader,
                settings=job.settings, run_args=run_args, kind="nightly", n_skipped=selection.up_to_date,
                on_progress=on_progress, backend_reason=job.backend_reason,
            ))
    result = NightlySummary(**summary.model_dump(), batch=options.batch is not None, n_new=len(selection.new),
                            n_retry=len(selection.retry), n_stale=len(selection.stale), n_dead=selection.dead)
    if options.batch is None:
        result.n_in_flight = selection.in_flight
        if selection.in_flight:
            result.warnings.append(f"{selection.in_flight} features are in provider batches still in flight; "
                                   "run with --batch to collect them")
    if interrupted:
        result.warnings.append(interrupted_note(interrupted))
    result.exit_code = exit_code(result)
    result.line = summary_line(result)
    return result


__all__: Sequence[str] = [
    "EXIT_BUDGET", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE",
    "NightlyOptions", "NightlySelection", "NightlySummary", "exit_code", "nightly", "select_nightly",
    "summary_line",
]
