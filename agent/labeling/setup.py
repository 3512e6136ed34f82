"""One job set-up for `label`, `label --batch` and `label --nightly`, then the run.

    label(workspace, LabelOptions(...)) -> JobSummary | DryRun

In order: resolve the backend and settings (flags > plmlabel.toml > defaults; `resolve_job`), build
the labeler (a missing key fails here, before anything is written), take the workspace lock
(`labeling_lock`; LockedError, exit code 4, when another job has it; a dry run takes none), select
the features (`selection.plan_features`, or `selection.select_nightly`), load the first feature's
examples (no usable index: one clear error before a run is recorded), then one run with the
synchronous or the batch transport (`runner.run_job`). The result is one `JobSummary`, with its
batch section for `--batch` and its nightly section for `--nightly`.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from agent.agentic.tools import Limits
from agent.backends import BACKENDS, Labeler, default_backend, make_labeler
from agent.labeling.batch import BatchSettings
from agent.labeling.estimate import DryRun, dry_run
from agent.labeling.examples import LoadExamples, index_examples
from agent.labeling.runner import run_job
from agent.labeling.selection import FeatureSelection, Plan, plan_features, select_nightly
from agent.labeling.summary import JobStart, JobSummary, NightlySection, ProgressEvent
from agent.labeling.writer import JobSettings
from agent.llm import RetryPolicy
from storage.errors import InputError
from storage.labels import in_flight_features, mark_interrupted_runs
from storage.lock import workspace_lock
from storage.workspace import Workspace


class LabelOptions(BaseModel):
    """One `plmlabel label` invocation. None means: the workspace config's value."""

    sae_id: str
    selection: FeatureSelection | None = None  # None with nightly: the nightly selection
    nightly: bool = False
    relabel_stale: bool = False  # with nightly
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    concurrency: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    residue_pass: bool = False
    batch: BatchSettings | None = None  # None: synchronous calls
    dry_run: bool = False
    agent: bool = False  # the agent stage between explain and simulate (agent/labeling/agent_stage.py)
    max_tool_calls: int | None = Field(None, ge=1)  # None: [agent] in plmlabel.toml
    max_simulations: int | None = Field(None, ge=1)
    max_turns: int | None = Field(None, ge=1)


def redact_url(url: str | None) -> str | None:
    """A URL without user:password, for the runs table."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class ResolvedJob:
    """A job's backend and settings: flags first, then plmlabel.toml, then defaults."""

    backend: str
    backend_reason: str | None  # why this backend, when it was chosen by default
    model: str | None
    base_url: str | None
    settings: JobSettings
    retry: RetryPolicy
    timeout_s: float
    agent: Limits | None = None  # the agent's limits; None: no agent stage

    def labeler(self) -> Labeler:
        return make_labeler(
            self.backend,
            model=self.model,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
            retry=self.retry,
            residue_pass=self.settings.residue_pass,
            agent=self.agent,
        )

    def run_args(self, labeler: Labeler, **extra: Any) -> dict[str, Any]:
        """What the runs row records about the invocation (never keys; credentials cut from URLs)."""
        return {
            **extra,
            "backend": self.backend,
            "model": labeler.model,
            "base_url": redact_url(self.base_url),
            "concurrency": self.settings.concurrency,
            "budget_usd": self.settings.budget_usd,
            "threshold": self.settings.threshold,
            "min_heldout": self.settings.min_heldout,
            "residue_pass": self.settings.residue_pass,
            "agent": self.agent.model_dump() if self.agent else None,
        }


def resolve_job(
    workspace: Workspace,
    *,
    backend: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    budget_usd: float | None = None,
    retry: RetryPolicy | None = None,
    residue_pass: bool = False,
    agent: dict[str, int | None] | None = None,
) -> ResolvedJob:
    """Resolve a job's backend, model and settings. InputError for an unknown backend.

    `agent`: run the agent, with these limits where given (else `[agent]` of plmlabel.toml)."""
    loaded = workspace.load_config()
    config = loaded.label
    limits = None
    if agent is not None:
        limits = Limits(**{**loaded.agent.model_dump(), **{k: v for k, v in agent.items() if v is not None}})
    backend_name, reason = backend or config.backend, None
    if backend_name is None:
        backend_name, reason = default_backend()
    if backend_name not in BACKENDS:
        raise InputError(f"unknown backend {backend_name!r}; choose one of {', '.join(BACKENDS)}.")
    same = backend in (None, config.backend)
    settings = JobSettings(
        concurrency=concurrency or config.concurrency,
        budget_usd=budget_usd if budget_usd is not None else config.budget_usd,
        threshold=config.threshold,
        min_heldout=config.min_heldout,
        residue_pass=residue_pass,
    )
    return ResolvedJob(
        backend=backend_name,
        backend_reason=reason,
        model=model or (config.model if same else None),
        base_url=base_url or (config.base_url if same else None),
        settings=settings,
        retry=retry or RetryPolicy(max_attempts=config.max_retries + 1, initial_wait=config.retry_wait_s),
        timeout_s=config.timeout_s,
        agent=limits,
    )


def agent_limits(options: LabelOptions) -> dict[str, int | None] | None:
    if not options.agent:
        limits = {"--max-tool-calls": options.max_tool_calls, "--max-simulations": options.max_simulations,
                  "--max-turns": options.max_turns}
        given = [flag for flag, value in limits.items() if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} go with --agent.")
        return None
    return {"max_tool_calls": options.max_tool_calls, "max_simulations": options.max_simulations,
            "max_turns": options.max_turns}


def attach_corpus(workspace: Workspace, db: Any, sae_id: str, labeler: Labeler) -> None:
    """Give the agent stage the index and the database to search (nothing to do without an agent)."""
    from agent.agentic.view import IndexCorpus
    from agent.labeling.agent_stage import AgentStage
    from sae.index import open_index
    from storage.errors import PlmlabelError

    stages = [s for s in labeler.stages if isinstance(s, AgentStage)]
    if not stages:
        return
    try:
        corpus = IndexCorpus(open_index(workspace, sae_id), db)
    except PlmlabelError:  # examples from elsewhere (tests, benches): the agent searches what it was given
        return
    for stage in stages:
        stage.corpus = corpus


@contextmanager
def labeling_lock(workspace: Workspace, purpose: str) -> Iterator[list[str]]:
    """Hold the workspace lock for a labeling job (LockedError, exit code 4, when another job has it).

    Under the lock no other job runs, so runs rows still 'running' were left by killed jobs: they are
    marked interrupted. Yields their ids.
    """
    with workspace_lock(workspace.lock_path, purpose):
        with workspace.db() as db:
            interrupted = mark_interrupted_runs(db)
        yield interrupted


def interrupted_note(run_ids: Sequence[str]) -> str:
    return (
        f"{len(run_ids)} earlier run(s) left 'running' by a killed job marked interrupted: "
        f"{', '.join(run_ids[:5])}" + (", ..." if len(run_ids) > 5 else "")
    )


def _plan(workspace: Workspace, db: Any, sae_id: str, selection: FeatureSelection) -> Plan:
    """`plan_features`, told the index's size when the selection ranks by it (--select)."""
    n_indexed = None
    if selection.select is not None:
        from sae.index import open_index

        n_indexed = open_index(workspace, sae_id).n_proteins
    return plan_features(db, sae_id, selection, n_indexed=n_indexed)


def _check(options: LabelOptions) -> None:
    if options.dry_run and options.batch is not None:
        raise InputError("--dry-run and --batch cannot be combined; drop --batch to see the prompts.")
    if options.dry_run and options.nightly:
        raise InputError("--dry-run cannot be combined with --nightly; try --unlabeled --dry-run.")
    if options.nightly == (options.selection is not None):
        raise InputError("say which features to label: a selection, or the nightly one.")
    if (
        options.batch is not None
        and options.backend is not None
        and not BACKENDS[options.backend].sends_prompts
    ):
        raise InputError(f"--batch needs an LLM backend; the {options.backend} backend calls no provider.")


def label(
    workspace: Workspace,
    options: LabelOptions,
    *,
    load_examples: LoadExamples | None = None,
    on_start: Callable[[JobStart], None] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    retry: RetryPolicy | None = None,
) -> JobSummary | DryRun:
    """Run (or dry-run) one labeling job in `workspace`, as `plmlabel label` does (see the module docstring).

    `load_examples` defaults to the activation index; `on_start` hears the run id, backend and number
    of features before any request is sent.
    """
    _check(options)
    job = resolve_job(
        workspace,
        backend=options.backend,
        model=options.model,
        base_url=options.base_url,
        concurrency=options.concurrency,
        budget_usd=options.budget_usd,
        retry=retry,
        residue_pass=options.residue_pass,
        agent=agent_limits(options),
    )
    if options.batch is not None and not BACKENDS[job.backend].sends_prompts:
        raise InputError(f"--batch needs an LLM backend; the {job.backend} backend calls no provider.")
    if options.dry_run:
        with workspace.db() as db:
            assert options.selection is not None
            plan = _plan(workspace, db, options.sae_id, options.selection)
            loader = load_examples or index_examples(workspace, db, options.sae_id)
            if plan.features:
                loader(plan.features[0])
            return dry_run(
                sae_id=options.sae_id,
                features=plan.features,
                backend=job.backend,
                model=job.model or BACKENDS[job.backend].default_model,
                load_examples=loader,
                n_skipped=len(plan.skipped),
                backend_reason=job.backend_reason,
                residue_pass=options.residue_pass,
                agent=job.agent,
            )
    labeler = job.labeler()  # a missing key fails here, before the lock is taken or anything is written
    try:
        return _run(
            workspace,
            options,
            job,
            labeler,
            load_examples=load_examples,
            on_start=on_start,
            on_progress=on_progress,
            on_event=on_event,
        )
    finally:
        asyncio.run(labeler.aclose())  # the run closes it too; closing twice is harmless


def _run(
    workspace: Workspace,
    options: LabelOptions,
    job: ResolvedJob,
    labeler: Labeler,
    *,
    load_examples: LoadExamples | None,
    on_start: Callable[[JobStart], None] | None,
    on_progress: Callable[[ProgressEvent], None] | None,
    on_event: Callable[[str], None] | None,
) -> JobSummary:
    sae_id = options.sae_id
    purpose = f"{'nightly' if options.nightly else 'label'} {sae_id}" + (" --batch" if options.batch else "")
    with labeling_lock(workspace, purpose) as interrupted, workspace.db() as db:
        nightly_section, in_flight_left = None, 0
        if options.nightly:
            chosen = select_nightly(
                db,
                sae_id,
                model=labeler.model,
                prompt_versions=labeler.prompt_versions,
                relabel_stale=options.relabel_stale,
                in_flight=in_flight_features(db, sae_id),
            )
            features, n_skipped = chosen.features, chosen.up_to_date
            nightly_section = NightlySection(
                n_new=len(chosen.new),
                n_retry=len(chosen.retry),
                n_stale=len(chosen.stale),
                n_dead=chosen.dead,
            )
            in_flight_left = chosen.in_flight
            run_args = job.run_args(
                labeler,
                nightly=True,
                relabel_stale=options.relabel_stale,
                selected={
                    "new": len(chosen.new),
                    "failed_before": len(chosen.retry),
                    "stale": len(chosen.stale),
                },
            )
        else:
            assert options.selection is not None
            plan = _plan(workspace, db, sae_id, options.selection)
            features, n_skipped = plan.features, len(plan.skipped)
            if plan.note and on_event is not None:
                on_event(plan.note)
            run_args = job.run_args(
                labeler, features=options.selection.describe(), relabel=options.selection.relabel
            )
        loader = load_examples or index_examples(workspace, db, sae_id)
        if features:
            loader(features[0])  # no usable index: one clear error now, before a run is recorded
        if load_examples is None:
            attach_corpus(workspace, db, sae_id, labeler)
        summary = asyncio.run(
            run_job(
                db,
                sae_id=sae_id,
                features=features,
                labeler=labeler,
                load_examples=loader,
                settings=job.settings,
                batch=options.batch,
                kind="nightly" if options.nightly else ("batch" if options.batch else "label"),
                run_args=run_args,
                n_skipped=n_skipped,
                backend_reason=job.backend_reason,
                on_start=on_start,
                on_progress=on_progress,
                on_event=on_event,
            )
        )
    summary.nightly = nightly_section
    if options.batch is None and in_flight_left:
        summary.n_in_flight = in_flight_left
        summary.warnings.append(
            f"{in_flight_left} features are in provider batches still in flight; "
            "run with --batch to collect them"
        )
    if interrupted:
        summary.warnings.append(interrupted_note(interrupted))
    return summary.settle()
