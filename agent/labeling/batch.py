"""The batch transport: the protocol's requests through the providers' batch APIs (half price).

    await run_batch(writer, labeler, features, load, settings, BatchSettings(...))

A feature's request stages each go out in a batch: its first request (explain) in a batch of new
work; once that batch has ended and been collected, the answer is parsed by the stage, the next
stages run (`protocol.advance`) until one defers its request, which goes into a batch of that stage;
when the last stage's answer is collected the feature is scored and the writer stores it. Stages
that do their own work (`CallStage`) run in-line while collecting, at full price. One invocation:

1. collects every ended batch of this SAE (for this provider and model): answers become the next
   stage's requests, submitted at once, or stored labels;
2. submits the first request of the selected features that are not in flight, within the budget;
3. returns (a cron job: "submitted N, in flight M"), or with `BatchSettings.wait` polls every
   `poll_interval_s` and collects until nothing of this provider and model is in flight.

Surviving restarts: everything collecting needs is in the `batches` table, written as soon as a
batch is created: per custom_id the feature, the stage, the prompt versions and the feature's work
so far (`FeatureWork.carried()`: earlier stages' results, tokens and cost, the index hash and
held-out accessions, so answers about a since-rebuilt index are refused, not scored against other
proteins). A process killed at any point leaves batches the next invocation collects; nothing is
submitted twice, except in the moment between the provider accepting a batch and its row being
written. Collecting a batch skips features already in another open batch (a later stage's request
went out before a crash), and the outcomes it stores and the batch's closing are one transaction.

Answers: each batch line is the request a synchronous call sends, so answers parse and score alike.
A malformed answer gets the one repair attempt of the synchronous path, sent as a normal
(full-price) call; the lines of a batch are collected `concurrency` at a time, so repairs respect
--concurrency. A request that errored, expired or was canceled fails its feature with the reason;
a batch the provider no longer knows (HTTP 404) fails its features; a provider that keeps failing
while polling stops the run (status failed) and the batch stays in flight for the next run.

Costs: batch answers at batch price, repairs at full price; a label's cost is all its stages'; a
run's cost is what it collected (a submit-only run costs $0). Budget: new features are submitted
while the run's spend plus the estimated batch-price cost of every stage of what it submitted stay
within `budget_usd`; the later stages of collected features were budgeted with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from agent.backends import Labeler
from agent.labeling.batch_lines import Entry, PendingLine, answer_line, missing, read_pending
from agent.labeling.estimate import estimate_cost
from agent.labeling.examples import LoadExamples, load_or_fail
from agent.labeling.protocol import (
    Answer,
    FeatureWork,
    Outcome,
    RequestStage,
    add_cost,
    advance,
    failed,
    finish,
)
from agent.labeling.writer import JobSettings, RunWriter
from agent.llm import (
    BatchAPI,
    BatchState,
    LineResult,
    LLMError,
    LLMRequest,
    ProviderError,
    Usage,
    batch_api,
)
from storage.errors import PlmlabelError
from storage.labels import BatchRow, close_batch, in_flight_features, open_batches, record_batch

DEFAULT_MAX_REQUESTS = 2000  # per batch: small enough that one batch's results arrive in good time


class BatchSettings(BaseModel):
    wait: bool = False
    poll_interval_s: float = Field(60.0, gt=0)
    max_requests: int = Field(DEFAULT_MAX_REQUESTS, ge=1)


class _Line(BaseModel):
    """What one collected line gave: a next request, or an outcome; and what this run paid for it."""

    model_config = {"arbitrary_types_allowed": True}
    follow: Any = None  # Entry
    outcome: Any = None  # Outcome
    usage: Any = Field(default_factory=Usage)
    cost: float | None = 0.0


class BatchTransport:
    def __init__(
        self,
        writer: RunWriter,
        labeler: Labeler,
        load: LoadExamples,
        settings: JobSettings,
        batch: BatchSettings,
        on_event: Callable[[str], None] | None,
    ) -> None:
        assert labeler.llm is not None
        self.writer, self.labeler, self.llm, self.load = writer, labeler, labeler.llm, load
        self.api: BatchAPI = batch_api(labeler.llm)
        self.settings, self.batch, self.on_event = settings, batch, on_event
        self.db, self.sae_id = writer.db, writer.sae_id
        self.stored: set[int] = set()  # features this run stored
        self.poll_failed = False  # the provider kept failing while polling: stop collecting too
        assert writer.batch is not None
        self.section = writer.batch

    def event(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(self.writer.redact(message))

    def mine(self) -> list[BatchRow]:
        """Open batches this job can collect: same provider and model."""
        rows = open_batches(self.db, self.sae_id, self.api.provider)
        for model in sorted({r.model or "?" for r in rows if r.model != self.labeler.model}):
            self.writer.warn(
                f"batches made with model {model} are in flight; run with --model {model} to collect them"
            )
        return [r for r in rows if r.model == self.labeler.model]

    def store(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.writer.store(outcome)
            self.stored.add(outcome.feature)

    # --- collecting -------------------------------------------------------------------------------
    async def collect_ready(self) -> None:
        """Collect every ended batch; leave the others in flight."""
        for row in self.mine():
            if self.poll_failed:
                return
            try:
                state = await self.api.poll(row.batch_id)
                if not state.ended:
                    continue
                results = await self.api.results(row.batch_id, state)
            except ProviderError as exc:
                self._poll_failed(row, exc)
                continue
            await self._collect(row, results, state)

    def _poll_failed(self, row: BatchRow, exc: ProviderError) -> None:
        if exc.status == 404:  # the provider no longer has it (or never had it under this key)
            reason = f"the provider no longer knows batch {row.batch_id} ({exc.reason})"
            outcomes = []
            for pending in map(read_pending, row.requests.values()):
                carried = pending.carried
                outcomes.append(
                    failed(
                        pending.feature,
                        reason,
                        usage=Usage(**carried.get("usage", {})),
                        cost=carried.get("cost", 0.0),
                        prompt_versions=pending.prompt_versions,
                    )
                )
            with self.db.transaction():
                self.store(outcomes)
                close_batch(self.db, row.batch_id, status="failed", message=self.writer.redact(reason))
            self.event(f"gave up on {row.stage} batch {row.batch_id}: {reason}")
        else:  # retries are spent: the provider keeps failing; the batch stays for the next run
            self.writer.warn(f"could not collect batch {row.batch_id} ({exc.reason}); it stays in flight")
            self.poll_failed = True
            why = "a fatal error" if exc.fatal else "the provider kept failing"
            self.writer.stop("failed", f"stopped after {why}: {exc.reason}")

    async def _collect(self, row: BatchRow, results: dict[str, LineResult], state: BatchState) -> None:
        elsewhere: set[int] = set()
        for other in open_batches(self.db, self.sae_id):
            if other.batch_id != row.batch_id:
                elsewhere |= {int(p["feature"]) for p in other.requests.values()}
        semaphore = asyncio.Semaphore(self.settings.concurrency)

        async def one(custom_id: str, data: dict[str, Any]) -> _Line | None:
            pending = read_pending(data)
            if pending.feature in elsewhere:  # its next request went out before a crash
                return None
            async with semaphore:
                return await self._line(pending, results.get(custom_id) or missing(state))

        lines = [x for x in await asyncio.gather(*(one(c, d) for c, d in row.requests.items())) if x]
        follow = [x.follow for x in lines if x.follow is not None]
        outcomes = [x.outcome for x in lines if x.outcome is not None]
        try:
            await self._submit(follow)
        except ProviderError as exc:  # collected again next time; its next requests go out then
            self.writer.warn(
                f"could not submit the next requests of batch {row.batch_id} ({exc.reason}); "
                "it stays in flight"
            )
            if exc.fatal:
                self.writer.stop("failed", f"stopped after a fatal error: {exc.reason}")
            return
        n_failed = sum(not o.ok for o in outcomes)
        summary = f"{sum(o.ok for o in outcomes)} labeled, {len(follow)} sent on, {n_failed} failed"
        for line in lines:
            self.writer.spend(line.usage, line.cost)
        with self.db.transaction():
            self.store(outcomes)
            close_batch(self.db, row.batch_id, status="collected", message=summary)
        self.section.n_batches_collected += 1
        self.event(f"collected {row.stage} batch {row.batch_id}: {summary}")

    async def _line(self, pending: PendingLine, item: LineResult) -> _Line:
        carried = pending.carried
        before_usage, before_cost = Usage(**carried.get("usage", {})), carried.get("cost", 0.0)

        def fail(error: str, usage: Usage = Usage(), cost: float | None = 0.0, fatal: bool = False) -> _Line:
            outcome = failed(
                pending.feature,
                error,
                usage=before_usage + usage,
                cost=add_cost(before_cost, cost),
                fatal=fatal,
                prompt_versions=pending.prompt_versions,
            )
            return _Line(outcome=outcome, usage=usage, cost=cost)

        try:
            examples = self.load(pending.feature)
        except PlmlabelError as exc:  # the index is at fault: the same rule as for new work
            return fail(f"could not load its examples: {exc}", fatal=True)
        try:
            work = FeatureWork.resume(examples, carried)
        except ValueError as exc:
            return fail(str(exc))
        stage = self.labeler.stages[pending.index]
        assert isinstance(stage, RequestStage) and stage.name == pending.stage
        request = stage.request(work)
        assert request is not None
        parsed, usage, cost, error, fatal = await answer_line(self.api, self.labeler, item, request)
        if error is not None:
            return fail(error, usage, cost, fatal)
        work.spend(usage, cost)
        stage.accept(work, parsed)
        deferred: list[Entry] = []
        try:
            following = await advance(
                work, self.labeler, self._defer(deferred, pending.prompt_versions), start=pending.index + 1
            )
        except LLMError as exc:  # a stage that runs in-line failed
            paid = work.usage + exc.usage
            return _Line(
                outcome=failed(
                    pending.feature,
                    exc.reason,
                    usage=paid,
                    cost=add_cost(work.cost, self.labeler.cost(exc.usage)),
                    fatal=exc.fatal,
                    prompt_versions=pending.prompt_versions,
                ),
                usage=usage + exc.usage,
                cost=add_cost(cost, self.labeler.cost(exc.usage)),
            )
        spent_here = work.usage + Usage(
            -before_usage.input_tokens,
            -before_usage.output_tokens,
            -before_usage.cache_read,
            -before_usage.cache_write,
        )
        cost_here = None if work.cost is None or before_cost is None else work.cost - before_cost
        if following is not None:
            return _Line(follow=deferred[0], usage=spent_here, cost=cost_here)
        outcome = finish(
            work,
            threshold=self.settings.threshold,
            min_heldout=self.settings.min_heldout,
            prompt_versions=pending.prompt_versions,
        )
        return _Line(outcome=outcome, usage=spent_here, cost=cost_here)

    def _defer(
        self, into: list[Entry], versions: dict[str, str | None]
    ) -> Callable[[RequestStage, LLMRequest[Any], FeatureWork], Awaitable[Answer | None]]:
        async def defer(stage: RequestStage, request: LLMRequest[Any], work: FeatureWork) -> None:
            index = self.labeler.stages.index(stage)
            into.append(
                (
                    f"{stage.name}-{work.feature}",
                    self.llm.build_params(request),
                    PendingLine(
                        feature=work.feature,
                        stage=stage.name,
                        index=index,
                        prompt_versions=versions,
                        carried=work.carried(),
                    ),
                )
            )
            return None

        return defer

    # --- submitting -------------------------------------------------------------------------------
    async def _submit(self, entries: Sequence[Entry]) -> None:
        """Submit by stage, in batches of at most max_requests lines (and the provider's size limit)."""
        for stage in dict.fromkeys(e[2].stage for e in entries):
            chunk: list[Entry] = []
            size = 0
            for entry in (e for e in entries if e[2].stage == stage):
                line_size = BatchAPI.line_size(entry[:2])
                if chunk and (
                    len(chunk) >= min(self.batch.max_requests, self.api.max_requests)
                    or size + line_size > self.api.max_bytes
                ):
                    await self._submit_one(stage, chunk)
                    chunk, size = [], 0
                chunk.append(entry)
                size += line_size
            if chunk:
                await self._submit_one(stage, chunk)

    async def _submit_one(self, stage: str, chunk: Sequence[Entry]) -> None:
        batch_id = await self.api.submit([(custom_id, params) for custom_id, params, _ in chunk])
        record_batch(
            self.db,
            BatchRow(
                batch_id=batch_id,
                provider=self.api.provider,
                model=self.labeler.model,
                run_id=self.writer.run_id,
                sae_id=self.sae_id,
                stage=stage,
                requests={custom_id: pending.model_dump() for custom_id, _, pending in chunk},
            ),
        )
        self.section.n_batches_submitted += 1
        if chunk[0][2].index == 0:
            self.section.n_submitted += len(chunk)
        self.event(f"submitted {stage} batch {batch_id} ({len(chunk)} requests)")

    async def submit_new(self, features: Sequence[int]) -> None:
        """First requests for `features` not in flight (nor just stored by this run), within the budget."""
        in_flight = in_flight_features(self.db, self.sae_id)
        todo = [f for f in features if f not in in_flight and f not in self.stored]
        entries: list[Entry] = []
        versions = dict(self.labeler.prompt_versions)
        for position, feature in enumerate(todo):
            left = len(todo) - position
            if self.writer.stopped:
                self.writer.not_started += left
                break
            examples = load_or_fail(self.writer, self.load, feature, left=left - 1)
            if examples is None:
                break
            if self.settings.budget_usd is not None:
                estimate = estimate_cost(self.labeler, examples, batch=True)
                if not self.writer.reserve(estimate, left=left, batch=True):
                    break
            work = FeatureWork(examples)
            if await advance(work, self.labeler, self._defer(entries, versions)) is None:
                self.store(
                    [
                        finish(
                            work,
                            threshold=self.settings.threshold,
                            min_heldout=self.settings.min_heldout,
                            prompt_versions=versions,
                        )
                    ]
                )
            if len(entries) >= min(self.batch.max_requests, self.api.max_requests):
                if not await self._flush(entries):
                    self.writer.not_started += left - 1
                    return
                entries = []
        await self._flush(entries)

    async def _flush(self, entries: list[Entry]) -> bool:
        """Submit first requests; False (and the run stopped) when the provider would not take them."""
        if not entries:
            return True
        try:
            await self._submit(entries)
        except ProviderError as exc:
            submitted = in_flight_features(self.db, self.sae_id)
            self.writer.not_started += sum(1 for _, _, p in entries if p.feature not in submitted)
            self.writer.stop("failed", f"stopped: a batch could not be submitted: {exc.reason}")
            return False
        return True


async def run_batch(
    writer: RunWriter,
    labeler: Labeler,
    features: Sequence[int],
    load: LoadExamples,
    settings: JobSettings,
    batch: BatchSettings,
    *,
    on_event: Callable[[str], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """One invocation of a batch job (see the module docstring) through `writer`."""
    transport = BatchTransport(writer, labeler, load, settings, batch, on_event)
    try:
        await transport.collect_ready()
        if not writer.stopped:
            await transport.submit_new(features)
        # A stop submits nothing new; what is in flight is still collected (as the synchronous
        # transport finishes its work in flight), unless the provider itself keeps failing.
        while batch.wait and not transport.poll_failed and transport.mine():
            await sleep(batch.poll_interval_s)
            await transport.collect_ready()
    finally:
        writer.n_in_flight = len(in_flight_features(writer.db, writer.sae_id))
