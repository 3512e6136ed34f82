"""The synchronous transport: each request sent with `llm.generate`, features under one semaphore.

    await run_sync(writer, labeler, features, load, settings)

At most `settings.concurrency` features are in flight; every LLM call a feature makes (its stages,
their one repair) happens inside its slot, so the semaphore bounds all concurrency. Before a feature
starts, its estimated cost is reserved with the writer; when the writer says stop (budget, failures,
fatal error) nothing new starts and the work in flight is finished and stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from agent.backends import Labeler
from agent.labeling.estimate import estimate_cost
from agent.labeling.examples import LoadExamples, load_or_fail
from agent.labeling.protocol import Answer, FeatureWork, Outcome, RequestStage, advance, failed, finish
from agent.labeling.writer import JobSettings, RunWriter
from agent.llm import LLMError, LLMRequest


async def label_one(work: FeatureWork, labeler: Labeler, settings: JobSettings) -> Outcome:
    """All stages of one feature, now; an LLM failure becomes a failed outcome with its reason."""

    async def send(stage: RequestStage, request: LLMRequest[Any], _: FeatureWork) -> Answer:
        assert labeler.llm is not None
        result = await labeler.llm.generate(request)
        return Answer(parsed=result.parsed, usage=result.usage, cost=labeler.cost(result.usage))

    try:
        await advance(work, labeler, send)
    except LLMError as exc:
        work.spend(exc.usage, labeler.cost(exc.usage))
        return failed(
            work.feature,
            exc.reason,
            usage=work.usage,
            cost=work.cost,
            fatal=exc.fatal,
            prompt_versions=labeler.prompt_versions,
        )
    return finish(
        work,
        threshold=settings.threshold,
        min_heldout=settings.min_heldout,
        prompt_versions=labeler.prompt_versions,
    )


async def run_sync(
    writer: RunWriter, labeler: Labeler, features: Sequence[int], load: LoadExamples, settings: JobSettings
) -> None:
    """Label `features` in order through `writer`. Cancellation cancels the work in flight."""
    semaphore = asyncio.Semaphore(settings.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def work(examples: Any, estimate: float | None) -> None:
        try:
            outcome = await label_one(FeatureWork(examples), labeler, settings)
            writer.spend(outcome.usage, outcome.cost_usd)
            writer.release(estimate)
            writer.store(outcome)
        finally:
            semaphore.release()

    try:
        for position, feature in enumerate(features):
            await semaphore.acquire()
            if writer.stopped:
                semaphore.release()
                writer.not_started += len(features) - position
                break
            examples = load_or_fail(writer, load, feature, left=len(features) - position - 1)
            if examples is None:
                semaphore.release()
                break
            estimate = estimate_cost(labeler, examples) if settings.budget_usd is not None else 0.0
            if not writer.reserve(estimate, left=len(features) - position):
                semaphore.release()
                break
            task = asyncio.create_task(work(examples, estimate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
