"""Labeling through the providers' batch APIs (half price): submit -> poll -> collect, across restarts.

    run_batch_job(db, sae_id=..., features=..., labeler=..., ...) -> BatchSummary   one invocation
    label_batch(workspace, LabelOptions, BatchSettings) -> BatchSummary   `plmlabel label ... --batch`

A feature goes through two batches: its explain request; once that batch has ended and been
collected, a simulate request carrying the explanation; once that one is collected, the feature
is scored and its label stored. One invocation:

1. collects every ended batch of this SAE (for this provider and model): explain answers become
   simulate requests, submitted at once as new batches; simulate answers become stored labels;
2. submits explain requests for the selected features that are not already in flight, within the
   budget;
3. returns (a cron job: "submitted N, in flight M"), or with `BatchSettings.wait` polls every
   `poll_interval_s` and collects until nothing of this provider and model is in flight.

Surviving restarts: everything collecting needs is in the `batches` table, written as soon as a
batch is created: its id, provider, model, stage, and per custom_id the feature, the prompt
versions, the index hash and held-out accessions (so answers about a since-rebuilt index are
refused, not scored against other proteins), and for simulate the explanation and the explain
stage's tokens and cost. A process killed at any point leaves batches the next invocation
collects; nothing is submitted twice, except in the moment between the provider accepting a batch
and its row being written. Collecting an explain batch skips features already in a simulate batch,
so re-collecting it after a crash submits nothing twice.

Answers: each batch line is the same request a synchronous call sends, so answers parse and score
alike. A malformed answer gets the one repair attempt of the synchronous path, sent as a normal
(full-price) call; if that fails too, or a request errored, expired or was canceled, the feature
is recorded failed with the reason (a later job retries it: the nightly selection picks up failed
features). A whole batch the provider no longer knows (HTTP 404) fails its features likewise; a provider
that keeps failing while polling stops the run (status failed, nothing new submitted) and the
batch stays in flight for the next run.

Costs: batch answers at batch price (`pricing.cost_usd(batch=True)`), repairs at full price. A
label's cost is both stages'; a run's cost is what it collected (a submit-only run costs $0).
Budget: an invocation submits new features while the costs it collected plus the estimated
(batch-price) cost of both stages of what it submitted stay within `budget_usd`; simulate requests
for collected explanations were budgeted with their feature and are always submitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent import job as labeling
from agent import pricing
from agent.backends import Labeler, LLMLabeler
from agent.batch_api import BatchAPI, BatchState, Line, LineResult, batch_api
from agent.explain import Explanation, ExplanationOutput, build_explain_request
from agent.job import (
    Budget,
    FeatureFailure,
    FeatureOutcome,
    JobSettings,
    JobSummary,
    LabelOptions,
    LoadExamples,
    RunTally,
    add_cost,
    build_record,
    estimate_cost,
    labeling_lock,
    plan_features,
    resolve_job,
    scored_outcome,
)
from agent.llm import LLMError, LLMRequest, ProviderError, RetryPolicy, Usage, parse_output
from agent.simulate import Simulation, build_simulate_request, heldout_order
from sae.index import FeatureExamples
from storage.db import Database
from storage.errors import ConfigError, InputError, PlmlabelError
from storage.labels import (
    BatchRow,
    RunRecord,
    RunStatus,
    close_batch,
    in_flight_features,
    new_run_id,
    open_batches,
    record_batch,
    save_failure,
    save_label,
    start_run,
)
from storage.workspace import Workspace

Stage = Literal["explain", "simulate"]
Versions = dict[str, str | None]
DEFAULT_MAX_REQUESTS = 2000  # per batch: small enough that one batch's results arrive in good time


class PendingRequest(BaseModel):
    """What collecting one batch line needs (stored per custom_id in `batches.requests`)."""

    feature: int
    stage: Stage
    prompt_versions: dict[str, str | None]
    index_hash: str | None = None
    heldout: list[str] = Field(default_factory=list)  # simulate: the accessions asked about
    explanation: dict[str, Any] | None = None  # simulate: the ExplanationOutput fields
    explain_usage: dict[str, int] | None = None  # simulate: the explain stage's tokens
    explain_cost: float | None = None  # simulate: the explain stage's USD (None: unpriced model)


class BatchSettings(BaseModel):
    wait: bool = False
    poll_interval_s: float = Field(60.0, gt=0)
    max_requests: int = Field(DEFAULT_MAX_REQUESTS, ge=1)


class BatchSummary(JobSummary):
    n_submitted: int = 0  # features whose explain request this invocation submitted
    n_in_flight: int = 0  # features in batches of this SAE not yet collected, when it ended
    n_batches_submitted: int = 0
    n_batches_collected: int = 0


Entry = tuple[str, dict[str, Any], PendingRequest]  # (custom_id, SDK parameters, what collecting needs)
Finished = tuple[FeatureOutcome, Versions]  # an outcome to store, with its prompt versions


class _Unusable(Exception):
    """A feature's examples cannot be used to collect its answer."""


def _failed(pending: PendingRequest, error: str, usage: Usage | None = None, cost: float | None = 0.0,
            fatal: bool = False) -> Finished:
    outcome = FeatureOutcome(feature=pending.feature, error=error, fatal=fatal, usage=usage or Usage(),
                             cost_usd=cost)
    return outcome, pending.prompt_versions


@dataclass
class _Tally(RunTally):
    submitted: int = 0
    batches_submitted: int = 0
    batches_collected: int = 0
    stored: set[int] = field(default_factory=set)  # features whose label (or failure) this run stored
    warnings: dict[str, None] = field(default_factory=dict)  # ordered, without repeats


class _BatchJob:
    def __init__(self, db: Database, *, sae_id: str, labeler: LLMLabeler, load_examples: LoadExamples,
                 settings: JobSettings, batch: BatchSettings, run_id: str,
                 on_event: Callable[[str], None] | None) -> None:
        self.db, self.sae_id, self.labeler, self.load = db, sae_id, labeler, load_examples
        self.llm = labeler.llm
        self.api: BatchAPI = batch_api(self.llm)
        self.settings, self.batch, self.run_id = settings, batch, run_id
        self.tally = _Tally(cost=0.0 if self.priced else None)
        self.budget = Budget(settings.budget_usd)
        self.on_event = on_event

    @property
    def priced(self) -> bool:
        return self.labeler.cost(Usage(1, 1)) is not None

    def event(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(message)

    def warn(self, message: str) -> None:
        self.tally.warnings[message] = None

    def batch_cost(self, usage: Usage) -> float | None:
        return pricing.cost_usd(self.labeler.model, input_tokens=usage.input_tokens,
                                output_tokens=usage.output_tokens, cache_read=usage.cache_read,
                                cache_write=usage.cache_write, batch=True)

    def mine(self) -> list[BatchRow]:
        """Open batches this job can collect: same provider and model."""
        rows = open_batches(self.db, self.sae_id, self.api.provider)
        others = [r for r in rows if r.model != self.labeler.model]
        for model in sorted({r.model or "?" for r in others}):
            self.warn(f"batches made with model {model} are in flight; run with --model {model} to "
                      "collect them")
        return [r for r in rows if r.model == self.labeler.model]

    # --- collecting -------------------------------------------------------------------------------
    async def collect_ready(self) -> None:
        """Collect every ended batch; leave the others in flight."""
        for row in self.mine():
            if self.tally.stop is not None:
                return
            try:
                state = await self.api.poll(row.batch_id)
                if not state.ended:
                    continue
                results = await self.api.results(row.batch_id, state)
            except ProviderError as exc:
                self._poll_failed(row, exc)
                continue
            if row.stage == "explain":
                await self._collect_explain(row, results, state)
            else:
                await self._collect_simulate(row, results, state)

    def _poll_failed(self, row: BatchRow, exc: ProviderError) -> None:
        if exc.status == 404:  # the provider no longer has it (or never had it under this key)
            reason = f"the provider no longer knows batch {row.batch_id} ({exc.reason})"
            finished = [_failed(pending, reason, *self._explain_spent(pending))
                        for pending in map(PendingRequest.model_validate, row.requests.values())]
            with self.db.transaction():
                for outcome, versions in finished:
                    self._store(outcome, versions)
                close_batch(self.db, row.batch_id, status="failed", message=reason)
            self._count(outcome for outcome, _ in finished)
            self.event(f"gave up on {row.stage} batch {row.batch_id}: {reason}")
        else:  # retries are spent: the provider keeps failing; the batch stays for the next run
            self.warn(f"could not collect batch {row.batch_id} ({exc.reason}); it stays in flight")
            why = "a fatal error" if exc.fatal else "the provider kept failing"
            self.tally.stop = ("failed", f"stopped after {why}: {exc.reason}")

    @staticmethod
    def _explain_spent(pending: PendingRequest) -> tuple[Usage, float | None]:
        if pending.stage == "simulate" and pending.explain_usage is not None:
            return Usage(**pending.explain_usage), pending.explain_cost
        return Usage(), 0.0

    def _examples(self, pending: PendingRequest) -> FeatureExamples:
        try:
            examples = self.load(pending.feature)
        except PlmlabelError as exc:
            raise _Unusable(f"could not load its examples: {exc}") from exc
        rebuilt = _Unusable("the index was rebuilt after the batch was submitted; the answer is not scored")
        if pending.index_hash is not None and examples.index_hash != pending.index_hash:
            raise rebuilt
        if pending.stage == "simulate" and [p.accession for p in heldout_order(examples.heldout)] != \
                pending.heldout:
            raise rebuilt
        return examples

    async def _answer(
        self, item: LineResult, request: LLMRequest[Any]
    ) -> tuple[Any, Usage, float | None, str | None, bool]:
        """(parsed, usage, cost, error, fatal) of one batch line; a malformed answer gets one repair call."""
        if item.error is not None:
            return None, Usage(), 0.0, item.error, False
        try:
            reply = self.api.reply(item.raw, request)
        except ValueError as exc:
            return None, Usage(), 0.0, f"unusable batch answer: {str(exc).splitlines()[0][:200]}", False
        usage, cost = reply.usage, self.batch_cost(reply.usage)
        try:
            return parse_output(reply.text, request), usage, cost, None, False
        except ValueError as exc:
            first_error = str(exc)
        try:
            repaired = await self.llm.repair(request, reply, first_error)
        except LLMError as exc:
            total = add_cost(cost, self.labeler.cost(exc.usage))
            return None, usage + exc.usage, total, exc.reason, exc.fatal
        cost = add_cost(cost, self.labeler.cost(repaired.usage))
        return repaired.parsed, usage + repaired.usage, cost, None, False

    async def _collect_explain(self, row: BatchRow, results: dict[str, LineResult],
                               state: BatchState) -> None:
        already = in_flight_features(self.db, self.sae_id, stage="simulate")
        follow: list[Entry] = []
        finished: list[Finished] = []
        spent: list[tuple[Usage, float | None]] = []
        for custom_id, data in row.requests.items():
            pending = PendingRequest.model_validate(data)
            if pending.feature in already:  # its simulate request went out before a crash
                continue
            item = results.get(custom_id) or _missing(state)
            try:
                examples = self._examples(pending)
            except _Unusable as exc:
                finished.append(_failed(pending, str(exc)))
                continue
            parsed, usage, cost, error, fatal = await self._answer(item, build_explain_request(examples))
            spent.append((usage, cost))
            if error is not None:
                finished.append(_failed(pending, error, usage, cost, fatal))
                continue
            explanation = Explanation(**parsed.model_dump(), sae_id=self.sae_id, feature=pending.feature)
            versions = {**pending.prompt_versions, "simulate": self.labeler.prompt_versions.get("simulate")}
            if not examples.heldout:  # nothing to simulate: scored as it stands (never validated)
                empty = Simulation(sae_id=self.sae_id, feature=pending.feature, accessions=(), predicted=())
                finished.append((self._scored(examples, explanation, empty, usage, cost), versions))
                continue
            request = build_simulate_request(explanation, examples.heldout)
            follow.append((f"simulate-{pending.feature}", self.llm.build_params(request), PendingRequest(
                feature=pending.feature, stage="simulate", prompt_versions=versions,
                index_hash=examples.index_hash,
                heldout=[p.accession for p in heldout_order(examples.heldout)],
                explanation=ExplanationOutput.model_validate(explanation.model_dump()).model_dump(),
                explain_usage=asdict(usage), explain_cost=cost,
            )))
        try:
            await self._submit("simulate", follow)
        except ProviderError as exc:  # collected again next time; its simulate requests go out then
            self.warn(f"could not submit the simulate requests of batch {row.batch_id} ({exc.reason}); "
                      "it stays in flight")
            if exc.fatal:
                self.tally.stop = ("failed", f"stopped after a fatal error: {exc.reason}")
            return
        with self.db.transaction():
            for outcome, versions in finished:
                self._store(outcome, versions)
            close_batch(self.db, row.batch_id, status="collected",
                        message=f"{len(follow)} explained, {sum(not o.ok for o, _ in finished)} failed")
        for usage, cost in spent:
            self.tally.spend(usage, cost)
        self._count(outcome for outcome, _ in finished)
        self.tally.batches_collected += 1
        self.event(f"collected explain batch {row.batch_id}: {len(follow)} explained, "
                   f"{sum(not o.ok for o, _ in finished)} failed")

    async def _collect_simulate(self, row: BatchRow, results: dict[str, LineResult],
                                state: BatchState) -> None:
        finished: list[Finished] = []
        spent: list[tuple[Usage, float | None]] = []
        for custom_id, data in row.requests.items():
            pending = PendingRequest.model_validate(data)
            before_usage, before_cost = self._explain_spent(pending)
            item = results.get(custom_id) or _missing(state)
            try:
                examples = self._examples(pending)
            except _Unusable as exc:
                finished.append(_failed(pending, str(exc), before_usage, before_cost))
                continue
            explanation = Explanation(**(pending.explanation or {}), sae_id=self.sae_id,
                                      feature=pending.feature)
            parsed, usage, cost, error, fatal = await self._answer(
                item, build_simulate_request(explanation, examples.heldout))
            spent.append((usage, cost))
            total_usage, total_cost = before_usage + usage, add_cost(before_cost, cost)
            if error is not None:
                finished.append(_failed(pending, error, total_usage, total_cost, fatal))
                continue
            by_accession = parsed.model_dump(by_alias=True)
            accessions = tuple(p.accession for p in examples.heldout)
            simulation = Simulation(sae_id=self.sae_id, feature=pending.feature, accessions=accessions,
                                    predicted=tuple(float(by_accession[a]) for a in accessions))
            finished.append((self._scored(examples, explanation, simulation, total_usage, total_cost),
                             pending.prompt_versions))
        with self.db.transaction():
            for outcome, versions in finished:
                self._store(outcome, versions)
            close_batch(self.db, row.batch_id, status="collected",
                        message=f"{sum(o.ok for o, _ in finished)} labeled, "
                                f"{sum(not o.ok for o, _ in finished)} failed")
        for usage, cost in spent:
            self.tally.spend(usage, cost)
        self._count(outcome for outcome, _ in finished)
        self.tally.batches_collected += 1
        self.event(f"collected simulate batch {row.batch_id}: {sum(o.ok for o, _ in finished)} labeled, "
                   f"{sum(not o.ok for o, _ in finished)} failed")

    def _scored(self, examples: FeatureExamples, explanation: Explanation, simulation: Simulation,
                usage: Usage, cost: float | None) -> FeatureOutcome:
        return scored_outcome(examples, explanation, simulation, usage=usage, cost_usd=cost,
                              threshold=self.settings.threshold, min_heldout=self.settings.min_heldout)

    def _store(self, outcome: FeatureOutcome, versions: Versions) -> None:
        record = build_record(outcome, sae_id=self.sae_id, backend=self.labeler.name,
                              model=self.labeler.model, prompt_versions=versions, run_id=self.run_id)
        if outcome.ok:
            save_label(self.db, record, outcome.predictions)
        elif not save_failure(self.db, record):
            outcome.error = f"{outcome.error} (the earlier ok label was kept)"

    def _count(self, outcomes: Any) -> None:
        for outcome in outcomes:
            self.tally.stored.add(outcome.feature)
            if outcome.ok:
                self.tally.labeled += 1
                self.tally.validated += int(bool(outcome.score and outcome.score.validated))
            else:
                self.tally.failed += 1
                error = outcome.error or "unknown error"
                self.tally.failures.append(FeatureFailure(feature=outcome.feature, error=error))
                if outcome.fatal and self.tally.stop is None:
                    self.tally.stop = ("failed", f"stopped after a fatal error: {outcome.error}")

    # --- submitting -------------------------------------------------------------------------------
    async def _submit(self, stage: Stage, entries: Sequence[Entry]) -> None:
        """Submit in batches of at most max_requests lines (and the provider's size limit), recording each."""
        chunk: list[Entry] = []
        size = 0
        for entry in entries:
            line_size = BatchAPI.line_size(entry[:2])
            if chunk and (len(chunk) >= min(self.batch.max_requests, self.api.max_requests)
                          or size + line_size > self.api.max_bytes):
                await self._submit_one(stage, chunk)
                chunk, size = [], 0
            chunk.append(entry)
            size += line_size
        if chunk:
            await self._submit_one(stage, chunk)

    async def _submit_one(self, stage: Stage, chunk: Sequence[Entry]) -> None:
        lines: list[Line] = [(custom_id, params) for custom_id, params, _ in chunk]
        batch_id = await self.api.submit(lines)
        record_batch(self.db, BatchRow(
            batch_id=batch_id, provider=self.api.provider, model=self.labeler.model, run_id=self.run_id,
            sae_id=self.sae_id, stage=stage,
            requests={custom_id: pending.model_dump() for custom_id, _, pending in chunk},
        ))
        self.tally.batches_submitted += 1
        if stage == "explain":
            self.tally.submitted += len(chunk)
        self.event(f"submitted {stage} batch {batch_id} ({len(chunk)} requests)")

    async def submit_new(self, features: Sequence[int]) -> None:
        """Explain requests for `features` not in flight, within the budget.

        Features this run has just collected are left out: `features` was chosen before collecting.
        """
        in_flight = in_flight_features(self.db, self.sae_id)
        todo = [f for f in features if f not in in_flight and f not in self.tally.stored]
        pending: list[Entry] = []
        versions = dict(self.labeler.prompt_versions)
        for position, feature in enumerate(todo):
            try:
                examples = self.load(feature)
            except PlmlabelError as exc:  # the index itself is at fault: every feature would fail alike
                self.tally.not_started += len(todo) - position
                self.tally.stop = ("failed", f"stopped: could not load the examples of feature {feature}: "
                                             f"{exc}")
                break
            if self.settings.budget_usd is not None:
                estimate = estimate_cost(self.labeler.model, examples, batch=True) or 0.0
                if not self.budget.reserve(estimate):
                    self.tally.not_started += len(todo) - position
                    self.tally.stop = ("budget_exhausted",
                                       f"budget of ${self.settings.budget_usd:.2f} reached (collected "
                                       f"${self.budget.spent:.4f}, submitted ~${self.budget.reserved:.4f} at "
                                       f"batch price); {len(todo) - position} features not submitted")
                    break
            params = self.llm.build_params(build_explain_request(examples))
            pending.append((f"explain-{feature}", params, PendingRequest(
                feature=feature, stage="explain", prompt_versions=versions, index_hash=examples.index_hash)))
            if len(pending) >= min(self.batch.max_requests, self.api.max_requests):
                if not await self._flush(pending):
                    self.tally.not_started += len(todo) - position - 1
                    return
                pending = []
        await self._flush(pending)

    async def _flush(self, pending: list[Entry]) -> bool:
        """Submit explain requests; False (and the job stopped) when the provider would not take them."""
        if not pending:
            return True
        try:
            await self._submit("explain", pending)
        except ProviderError as exc:
            submitted = in_flight_features(self.db, self.sae_id)
            self.tally.not_started += sum(1 for _, _, p in pending if p.feature not in submitted)
            self.tally.stop = ("failed", f"stopped: a batch could not be submitted: {exc.reason}")
            return False
        return True


def _missing(state: BatchState) -> LineResult:
    why = state.detail or f"the batch ended ({state.status}) without a result for it"
    return LineResult(error=f"no answer: {why}")


async def run_batch_job(
    db: Database,
    *,
    sae_id: str,
    features: Sequence[int],
    labeler: Labeler,
    load_examples: LoadExamples,
    settings: JobSettings,
    batch: BatchSettings | None = None,
    run_args: dict[str, Any] | None = None,
    kind: str = "batch",
    n_skipped: int = 0,
    on_event: Callable[[str], None] | None = None,
    backend_reason: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BatchSummary:
    """One invocation of a batch job (see the module docstring); one runs row. Closes the labeler."""
    batch = batch or BatchSettings()
    try:
        if not isinstance(labeler, LLMLabeler):
            raise InputError("--batch needs an LLM backend (anthropic or openai); the baseline calls no "
                             "provider.")
        batch_api(labeler.llm)  # InputError for a provider without a batch API
        if labeler.cost(Usage(1, 1)) is None and settings.budget_usd is not None:
            raise ConfigError(f"no price is known for model {labeler.model!r}, so --budget-usd cannot be "
                              "enforced; drop --budget-usd or add the model to agent/pricing.py.")
    except PlmlabelError:
        await labeler.aclose()
        raise
    run_id = new_run_id()
    start_run(db, RunRecord(run_id=run_id, sae_id=sae_id, kind=kind, backend=labeler.name,
                            model=labeler.model, args={**(run_args or {}), "batch": True, "wait": batch.wait},
                            n_requested=len(features), n_skipped=n_skipped))
    job = _BatchJob(db, sae_id=sae_id, labeler=labeler, load_examples=load_examples, settings=settings,
                    batch=batch, run_id=run_id, on_event=on_event)
    if not job.priced:
        job.warn(f"no price is known for model {labeler.model!r}: labels are stored with cost null.")
    tally = job.tally
    status: RunStatus = "completed"
    try:
        await job.collect_ready()
        job.budget.spent = tally.cost or 0.0
        if tally.stop is None:
            await job.submit_new(features)
        while batch.wait and (tally.stop is None or tally.stop[0] == "budget_exhausted") and job.mine():
            await sleep(batch.poll_interval_s)
            await job.collect_ready()
        if tally.stop is not None:
            status = tally.stop[0]
    except BaseException as exc:
        interrupted = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit)
        status = "interrupted" if interrupted else "failed"
        if not interrupted:
            tally.stop = ("failed", f"stopped by an unexpected error: {type(exc).__name__}: {exc}")
        raise
    finally:
        n_in_flight = len(in_flight_features(db, sae_id))
        message = _message(status, tally, n_in_flight)
        tally.finish(db, run_id, status, n_skipped=n_skipped, message=message)
        with suppress(Exception):
            await labeler.aclose()
    return BatchSummary(
        run_id=run_id, sae_id=sae_id, status=status, backend=labeler.name, model=labeler.model,
        backend_reason=backend_reason, n_requested=len(features), n_skipped=n_skipped, message=message,
        warnings=list(tally.warnings), **tally.summary_fields(), n_submitted=tally.submitted,
        n_in_flight=n_in_flight, n_batches_submitted=tally.batches_submitted,
        n_batches_collected=tally.batches_collected,
    )


def _message(status: RunStatus, tally: _Tally, n_in_flight: int) -> str:
    parts = [f"{tally.labeled} labeled ({tally.validated} validated), {tally.failed} failed; "
             f"submitted {tally.submitted}, in flight {n_in_flight}"]
    if status == "interrupted":
        parts.append("interrupted; batches in flight are collected by the next run")
    elif tally.stop is not None:
        parts.append(tally.stop[1])
    return "; ".join(parts)


def label_batch(
    workspace: Workspace,
    options: LabelOptions,
    batch: BatchSettings | None = None,
    *,
    load_examples: LoadExamples | None = None,
    on_event: Callable[[str], None] | None = None,
    retry: RetryPolicy | None = None,
) -> BatchSummary:
    """`plmlabel label SAE_ID <selection> --batch`: one invocation, under the workspace lock."""
    if options.dry_run:
        raise InputError("--dry-run and --batch cannot be combined; drop --batch to see the prompts.")
    job = resolve_job(workspace, backend=options.backend, model=options.model, base_url=options.base_url,
                      concurrency=options.concurrency, budget_usd=options.budget_usd, retry=retry)
    with labeling_lock(workspace, f"label {options.sae_id} --batch") as interrupted, workspace.db() as db:
        plan = plan_features(db, options.sae_id, options.selection)
        loader = load_examples or labeling.index_loader(workspace, db, options.sae_id)
        if plan.features:
            loader(plan.features[0])  # no usable index: one clear error now, before a run is recorded
        labeler = job.labeler()
        run_args = job.run_args(labeler, features=options.selection.describe(),
                                relabel=options.selection.relabel)
        summary = asyncio.run(run_batch_job(
            db, sae_id=options.sae_id, features=plan.features, labeler=labeler, load_examples=loader,
            settings=job.settings, batch=batch, run_args=run_args, kind="batch", n_skipped=len(plan.skipped),
            on_event=on_event, backend_reason=job.backend_reason,
        ))
        if interrupted:
            summary.warnings.append(labeling.interrupted_note(interrupted))
        return summary
