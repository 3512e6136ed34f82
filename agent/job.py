"""Labeling jobs: which features, then explain -> simulate -> score -> store for each, concurrently.

    plan_features(db, sae_id, selection) -> Plan               which features to label and which to skip
    label_feature(examples, labeler, ...) -> FeatureOutcome    one feature's stages, no I/O but the LLM
    run_job(db, ..., features, labeler, load_examples) -> JobSummary   the runner: one per invocation
    dry_run(...) -> DryRun                                     the prompts and estimated cost, nothing sent
    label(workspace, LabelOptions, ...) -> JobSummary          all of it, as the `label` command calls it
    resolve_job(workspace, ...) -> ResolvedJob                 backend, model and settings: flags > config
    labeling_lock(workspace, purpose)                          the workspace lock every labeling job holds

One semaphore-bounded runner owns all concurrency. Before it starts a feature it estimates the
feature's cost and stops starting new ones when that would break the budget (work in flight
finishes). Each feature's label (or failure, with its reason) is written in its own transaction as
soon as it is done, so a job killed at any point keeps everything finished, and a rerun skips
features that already have an ok label without sending anything for them. A provider that keeps
failing (a fatal error such as a bad key, or `max_consecutive_failures` in a row) stops the job, as
does an index that cannot be read; the runs row says why (status failed) and the caller decides the
exit code (`agent.nightly.exit_code`).

Other job kinds build on these pieces: agent/nightly.py (`--nightly`: its own selection, then
`run_job(kind="nightly")`) and agent/batch.py (`--batch`: the providers' batch APIs, with
`scored_outcome` and `build_record` turning answers into labels). Every labeling job resolves its
backend and settings with `resolve_job` and holds the workspace lock (`labeling_lock`; LockedError,
exit code 4, when another job has it) for its whole duration; a dry run sends nothing and takes no
lock.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent import pricing
from agent.backends import BACKENDS, Labeler, default_backend, make_labeler
from agent.explain import Explanation, build_explain_request
from agent.llm import LLMError, LLMRequest, RetryPolicy, Usage
from agent.score import Score, score
from agent.simulate import Simulation, build_simulate_request
from sae.index import FeatureExamples
from storage.db import Database
from storage.errors import ConfigError, InputError, NotFoundError, PlmlabelError
from storage.labels import (
    LabelRecord,
    PredictionRow,
    RunRecord,
    RunStatus,
    finish_run,
    label_states,
    mark_interrupted_runs,
    new_run_id,
    save_failure,
    save_label,
    start_run,
)
from storage.lock import workspace_lock
from storage.workspace import Workspace

LoadExamples = Callable[[int], FeatureExamples]
# Typical answer sizes, for estimates before sending (the request's max_tokens is the hard cap).
EXPLAIN_OUTPUT_TOKENS = 350
SIMULATE_OUTPUT_TOKENS_PER_PROTEIN = 10
PLACEHOLDER_EXPLANATION_WORDS = 120


# --- selection -----------------------------------------------------------------------------------------
class FeatureSelection(BaseModel):
    """Which features a job covers. Exactly one of features / all / unlabeled / top."""

    features: list[int] | None = None  # explicit ids
    all: bool = False  # every indexed feature
    unlabeled: bool = False  # indexed features without an ok label (never labeled, or failed)
    top: int | None = Field(default=None, ge=1)  # the N live features firing on the most proteins
    relabel: bool = False  # label again features that already have an ok label

    def describe(self) -> str:
        if self.features is not None:
            return format_feature_spec(self.features)
        if self.top is not None:
            return f"top {self.top}"
        return "all" if self.all else "unlabeled"


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_feature_spec(spec: str) -> list[int]:
    """'0-99,120' -> [0, ..., 99, 120] (sorted, unique). InputError on anything else."""
    features: set[int] = set()
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            raise InputError(f"bad feature list {spec!r}: expected ids and ranges such as 0-99,120.")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise InputError(f"bad feature range {part.strip()!r}: the end is before the start.")
        if end - start > 10_000_000:
            raise InputError(f"feature range {part.strip()!r} is too large.")
        features.update(range(start, end + 1))
    return sorted(features)


def format_feature_spec(features: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts: list[str] = []
    ordered = sorted(set(features))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Plan:
    features: list[int]  # to label, in order
    skipped: list[int]  # selected but already labeled ok (and no --relabel)


def indexed_features(db: Database, sae_id: str) -> dict[int, tuple[float, float]]:
    """feature -> (max_activation, frac_proteins) for every indexed feature of the SAE.

    NotFoundError when the SAE is unknown or has no index yet.
    """
    from storage.features_store import list_feature_stats
    from storage.saes import get_sae

    get_sae(db, sae_id)
    stats = {s.feature: (s.max_activation, s.frac_proteins) for s in list_feature_stats(db, sae_id)}
    if not stats:
        raise NotFoundError(f"SAE {sae_id!r} has no activation index; run `plmlabel index {sae_id}` first.")
    return stats


def plan_features(db: Database, sae_id: str, selection: FeatureSelection) -> Plan:
    """Resolve a selection against the index and the label store."""
    chosen = [selection.features is not None, selection.all, selection.unlabeled, selection.top is not None]
    if sum(chosen) != 1:
        raise InputError("say which features to label: one of --features, --all, --unlabeled or --top N.")
    stats = indexed_features(db, sae_id)
    done = {f for f, s in label_states(db, sae_id).items() if s.status == "ok"}
    if selection.features is not None:
        unknown = [f for f in selection.features if f not in stats]
        if unknown:
            shown = format_feature_spec(unknown[:20]) + (", ..." if len(unknown) > 20 else "")
            raise InputError(
                f"SAE {sae_id!r} has no feature {shown} (its index holds features 0-{max(stats)})."
            )
        wanted = list(selection.features)
    elif selection.top is not None:
        live = [f for f, (peak, _) in stats.items() if peak > 0]
        live.sort(key=lambda f: (-stats[f][1], -stats[f][0], f))
        wanted = live[: selection.top]
    elif selection.unlabeled:
        return Plan([f for f in sorted(stats) if f not in done], [])
    else:
        wanted = sorted(stats)
    if selection.relabel:
        return Plan(wanted, [])
    return Plan([f for f in wanted if f not in done], [f for f in wanted if f in done])


# --- one feature ---------------------------------------------------------------------------------------
@dataclass
class FeatureOutcome:
    feature: int
    explanation: Explanation | None = None
    predictions: list[PredictionRow] = field(default_factory=list)
    score: Score | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    error: str | None = None
    fatal: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


async def label_feature(
    examples: FeatureExamples, labeler: Labeler, *, threshold: float, min_heldout: int
) -> FeatureOutcome:
    """Explain, simulate, score one feature. An LLM failure becomes an outcome with its reason."""
    outcome = FeatureOutcome(feature=examples.feature)
    try:
        explained = await labeler.explain(examples)
        outcome.usage = outcome.usage + explained.usage
        simulated = await labeler.simulate(explained.parsed, examples)
        outcome.usage = outcome.usage + simulated.usage
    except LLMError as exc:
        outcome.usage = outcome.usage + exc.usage
        outcome.error, outcome.fatal = exc.reason, exc.fatal
        outcome.cost_usd = labeler.cost(outcome.usage)
        return outcome
    return scored_outcome(examples, explained.parsed, simulated.parsed, usage=outcome.usage,
                          cost_usd=labeler.cost(outcome.usage), threshold=threshold, min_heldout=min_heldout)


def scored_outcome(
    examples: FeatureExamples, explanation: Explanation, simulation: Simulation, *, usage: Usage,
    cost_usd: float | None, threshold: float, min_heldout: int,
) -> FeatureOutcome:
    """A finished feature: its explanation, predictions against the actual activations, and score."""
    predicted = simulation.predicted
    predictions = [
        PredictionRow(accession=a, predicted=p, actual=n, actual_raw=r)
        for a, p, n, r in zip(simulation.accessions, predicted, examples.heldout_normalized,
                              examples.heldout_actuals, strict=True)
    ]
    result = score(predicted, examples.heldout_normalized, threshold=threshold, min_heldout=min_heldout)
    return FeatureOutcome(feature=examples.feature, explanation=explanation, predictions=predictions,
                          score=result, usage=usage, cost_usd=cost_usd)


def _record(outcome: FeatureOutcome, sae_id: str, labeler: Labeler, run_id: str) -> LabelRecord:
    return build_record(outcome, sae_id=sae_id, backend=labeler.name, model=labeler.model,
                        prompt_versions=labeler.prompt_versions, run_id=run_id)


def build_record(
    outcome: FeatureOutcome, *, sae_id: str, backend: str, model: str,
    prompt_versions: Mapping[str, str | None], run_id: str,
) -> LabelRecord:
    """The labels row of an outcome (ok or failed) with its provenance."""
    versions = prompt_versions
    common: dict[str, Any] = {
        "sae_id": sae_id, "feature": outcome.feature, "backend": backend,
        "explainer_model": model, "simulator_model": model,
        "explain_prompt": "explain" if versions.get("explain") else None,
        "explain_prompt_version": versions.get("explain"),
        "simulate_prompt": "simulate" if versions.get("simulate") else None,
        "simulate_prompt_version": versions.get("simulate"),
        "input_tokens": outcome.usage.total_input, "output_tokens": outcome.usage.output_tokens,
        "cost_usd": outcome.cost_usd, "run_id": run_id,
    }
    if not outcome.ok:
        return LabelRecord(status="failed", error=outcome.error, **common)
    explanation, result = outcome.explanation, outcome.score
    assert explanation is not None and result is not None
    return LabelRecord(
        status="ok", label=explanation.label, description=explanation.description,
        concepts=list(explanation.concepts), confidence=explanation.confidence, pearson=result.pearson,
        spearman=result.spearman, n_heldout=result.n, validated=result.validated, **common,
    )


# --- the runner ----------------------------------------------------------------------------------------
class JobSettings(BaseModel):
    concurrency: int = Field(4, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    threshold: float = 0.5
    min_heldout: int = Field(10, ge=2)
    max_consecutive_failures: int = Field(5, ge=1)


class FeatureFailure(BaseModel):
    feature: int
    error: str


class ProgressEvent(BaseModel):
    feature: int
    status: Literal["ok", "failed"]
    done: int
    total: int
    cost_usd: float | None
    label: str | None = None


class JobSummary(BaseModel):
    run_id: str
    sae_id: str
    status: RunStatus
    backend: str
    model: str
    backend_reason: str | None = None  # why this backend, when it was chosen by default
    n_requested: int
    n_labeled: int = 0
    n_validated: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_not_started: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    message: str = ""
    failures: list[FeatureFailure] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No feature failed and the job was not stopped by a failing provider."""
        return self.n_failed == 0 and self.status != "failed"


class Budget:
    """Spent + reserved (estimates of work in flight) may not pass the limit."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, estimate: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + estimate > self.limit:
            return False
        self.reserved += estimate
        return True

    def settle(self, estimate: float, actual: float | None) -> None:
        self.reserved = max(0.0, self.reserved - estimate)
        self.spent += actual or 0.0


def placeholder_explanation(examples: FeatureExamples) -> Explanation:
    """A stand-in of typical size, for estimating a simulate request before the explanation exists."""
    return Explanation(
        sae_id=examples.sae_id, feature=examples.feature, label="(the explanation from the explain step)",
        description=" ".join(["word"] * PLACEHOLDER_EXPLANATION_WORDS), concepts=["concept"] * 3,
        confidence=0.5,
    )


def feature_requests(examples: FeatureExamples) -> list[tuple[str, LLMRequest, int]]:
    """(stage, request, expected output tokens) an LLM backend sends for one feature."""
    simulate_out = 20 + SIMULATE_OUTPUT_TOKENS_PER_PROTEIN * len(examples.heldout)
    placeholder = placeholder_explanation(examples)
    return [
        ("explain", build_explain_request(examples), EXPLAIN_OUTPUT_TOKENS),
        ("simulate", build_simulate_request(placeholder, examples.heldout), simulate_out),
    ]


def estimate_cost(model: str, examples: FeatureExamples, *, batch: bool = False) -> float | None:
    """Estimated USD for one feature (~4 chars/token, no cache discount; `batch`: at batch-API price).
    None: the model has no price."""
    total = 0.0
    for _, request, out_tokens in feature_requests(examples):
        cost = pricing.cost_usd(model, input_tokens=pricing.estimate_tokens(request.text),
                                output_tokens=out_tokens, batch=batch)
        if cost is None:
            return None
        total += cost
    return total


def add_cost(a: float | None, b: float | None) -> float | None:
    """Costs add up; one unknown (unpriced) part makes the total unknown."""
    return None if a is None or b is None else a + b


@dataclass
class RunTally:
    """What one labeling run has done so far (the synchronous job and the batch job share it)."""

    labeled: int = 0
    validated: int = 0
    failed: int = 0
    not_started: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float | None = 0.0
    failures: list[FeatureFailure] = field(default_factory=list)
    stop: tuple[RunStatus, str] | None = None

    def spend(self, usage: Usage, cost: float | None) -> None:
        self.usage = self.usage + usage
        self.cost = add_cost(self.cost, cost)

    def finish(self, db: Database, run_id: str, status: RunStatus, *, n_skipped: int, message: str) -> None:
        """Close the run's row with what this tally counted."""
        finish_run(db, run_id, status=status, n_labeled=self.labeled, n_failed=self.failed,
                   n_skipped=n_skipped, input_tokens=self.usage.total_input,
                   output_tokens=self.usage.output_tokens, cost_usd=self.cost, message=message)

    def summary_fields(self) -> dict[str, Any]:
        """The counters of a JobSummary (or its batch subclass)."""
        return {
            "n_labeled": self.labeled, "n_validated": self.validated, "n_failed": self.failed,
            "n_not_started": self.not_started, "input_tokens": self.usage.total_input,
            "output_tokens": self.usage.output_tokens, "cost_usd": self.cost, "failures": self.failures,
        }


@dataclass
class _Tally(RunTally):
    done: int = 0
    consecutive_failures: int = 0


async def run_job(
    db: Database,
    *,
    sae_id: str,
    features: Sequence[int],
    labeler: Labeler,
    load_examples: LoadExamples,
    settings: JobSettings,
    run_args: dict[str, Any] | None = None,
    kind: str = "label",
    n_skipped: int = 0,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    backend_reason: str | None = None,
) -> JobSummary:
    """Label `features`, one runs row for the whole invocation. Closes the labeler when done."""
    warnings: list[str] = []
    priced = labeler.cost(Usage(1, 1)) is not None
    if not priced:
        if settings.budget_usd is not None:
            await labeler.aclose()
            raise ConfigError(f"no price is known for model {labeler.model!r}, so --budget-usd cannot be "
                              "enforced; drop --budget-usd or add the model to agent/pricing.py.")
        warnings.append(f"no price is known for model {labeler.model!r}: labels are stored with cost null.")
    run_id = new_run_id()
    start_run(db, RunRecord(run_id=run_id, sae_id=sae_id, kind=kind, backend=labeler.name,
                            model=labeler.model, args=run_args or {}, n_requested=len(features),
                            n_skipped=n_skipped))
    tally = _Tally(cost=0.0 if priced else None)
    budget = Budget(settings.budget_usd)
    semaphore = asyncio.Semaphore(settings.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    def finished(outcome: FeatureOutcome, estimate: float) -> None:
        budget.settle(estimate, outcome.cost_usd)
        record = _record(outcome, sae_id, labeler, run_id)
        tally.done += 1
        tally.spend(outcome.usage, outcome.cost_usd)
        if outcome.ok:
            save_label(db, record, outcome.predictions)
            tally.labeled += 1
            tally.validated += int(bool(outcome.score and outcome.score.validated))
            tally.consecutive_failures = 0
        else:
            kept = not save_failure(db, record)
            reason = outcome.error or "unknown error"
            shown = reason + (" (the earlier ok label was kept)" if kept else "")
            tally.failures.append(FeatureFailure(feature=outcome.feature, error=shown))
            tally.failed += 1
            tally.consecutive_failures += 1
            if tally.stop is None and (outcome.fatal
                                       or tally.consecutive_failures >= settings.max_consecutive_failures):
                why = "a fatal error" if outcome.fatal else f"{tally.consecutive_failures} failures in a row"
                tally.stop = ("failed", f"stopped after {why}: {reason}")
        if on_progress is not None:
            on_progress(ProgressEvent(
                feature=outcome.feature, status="ok" if outcome.ok else "failed", done=tally.done,
                total=len(features), cost_usd=tally.cost,
                label=outcome.explanation.label if outcome.explanation else None,
            ))

    async def work(examples: FeatureExamples, estimate: float) -> None:
        try:
            outcome = await label_feature(examples, labeler, threshold=settings.threshold,
                                          min_heldout=settings.min_heldout)
            finished(outcome, estimate)
        finally:
            semaphore.release()

    status: RunStatus = "completed"
    try:
        for position, feature in enumerate(features):
            await semaphore.acquire()
            if tally.stop is not None:
                semaphore.release()
                tally.not_started = len(features) - position
                break
            try:
                examples = load_examples(feature)
            except PlmlabelError as exc:  # the index itself is at fault: every feature would fail alike
                semaphore.release()
                finished(FeatureOutcome(feature=feature, error=f"could not load its examples: {exc}",
                                        fatal=True), 0.0)
                continue
            estimate = 0.0
            if settings.budget_usd is not None:
                estimate = estimate_cost(labeler.model, examples) or 0.0
                if not budget.reserve(estimate):
                    semaphore.release()
                    tally.not_started = len(features) - position
                    tally.stop = ("budget_exhausted",
                                  f"budget of ${settings.budget_usd:.2f} reached (spent ${budget.spent:.4f}; "
                                  f"the next feature would cost about ${estimate:.4f}); "
                                  f"{tally.not_started} features not started")
                    break
            task = asyncio.create_task(work(examples, estimate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        if tally.stop is not None:
            status = tally.stop[0]
    except BaseException as exc:
        interrupted = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit)
        status = "interrupted" if interrupted else "failed"
        if not interrupted:
            tally.stop = ("failed", f"stopped by an unexpected error: {type(exc).__name__}: {exc}")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        message = _message(status, tally, len(features))
        tally.finish(db, run_id, status, n_skipped=n_skipped, message=message)
        await labeler.aclose()
    return JobSummary(
        run_id=run_id, sae_id=sae_id, status=status, backend=labeler.name, model=labeler.model,
        backend_reason=backend_reason, n_requested=len(features), n_skipped=n_skipped, message=message,
        warnings=warnings, **tally.summary_fields(),
    )


def _message(status: RunStatus, tally: _Tally, n_requested: int) -> str:
    parts = [f"{tally.labeled} labeled ({tally.validated} validated), {tally.failed} failed of {n_requested}"]
    if status == "interrupted":
        parts.append(f"interrupted; {n_requested - tally.done} features not finished (rerun to continue)")
    elif tally.stop is not None:
        parts.append(tally.stop[1])
    return "; ".join(parts)


# --- dry run -------------------------------------------------------------------------------------------
class DryRunRequest(BaseModel):
    stage: str
    system: str
    user: str
    input_tokens: int
    output_tokens: int


class DryRunFeature(BaseModel):
    feature: int
    requests: list[DryRunRequest]
    cost_usd: float | None


class DryRun(BaseModel):
    sae_id: str
    backend: str
    model: str
    backend_reason: str | None = None
    n_skipped: int
    features: list[DryRunFeature]
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    note: str


_ESTIMATE_NOTE = ("estimate: ~4 characters per token, typical answer sizes, no prompt-cache discount; the "
                  "simulate prompt uses a placeholder explanation")


def dry_run(
    *, sae_id: str, features: Sequence[int], backend: str, model: str, load_examples: LoadExamples,
    n_skipped: int = 0, backend_reason: str | None = None,
) -> DryRun:
    """The prompts each feature would send and their estimated cost. Needs no key, sends nothing."""
    rows: list[DryRunFeature] = []
    sends_prompts = BACKENDS[backend].key_env is not None
    for feature in features:
        examples = load_examples(feature)
        requests = []
        if sends_prompts:
            for stage, request, out_tokens in feature_requests(examples):
                requests.append(DryRunRequest(
                    stage=stage, system=request.system, user="\n\n".join(m.content for m in request.messages),
                    input_tokens=pricing.estimate_tokens(request.text), output_tokens=out_tokens,
                ))
        cost = estimate_cost(model, examples) if sends_prompts else 0.0
        rows.append(DryRunFeature(feature=feature, requests=requests, cost_usd=cost))
    costs = [r.cost_usd for r in rows]
    return DryRun(
        sae_id=sae_id, backend=backend, model=model, backend_reason=backend_reason, n_skipped=n_skipped,
        features=rows,
        input_tokens=sum(q.input_tokens for r in rows for q in r.requests),
        output_tokens=sum(q.output_tokens for r in rows for q in r.requests),
        cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        note=_ESTIMATE_NOTE if sends_prompts else "the baseline sends no prompts",
    )


# --- the whole `label` command -------------------------------------------------------------------------
class LabelOptions(BaseModel):
    """One `plmlabel label` invocation. None means: the workspace config's value."""

    sae_id: str
    selection: FeatureSelection
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    concurrency: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    dry_run: bool = False


def redact_url(url: str | None) -> str | None:
    """A URL without user:password, for the runs table."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def index_loader(workspace: Workspace, db: Database, sae_id: str) -> LoadExamples:
    from sae.index import load_feature_examples

    return lambda feature: load_feature_examples(workspace, db, sae_id, feature)


class JobStart(BaseModel):
    """What a job is about to do, told before anything is sent."""

    sae_id: str
    backend: str
    model: str
    backend_reason: str | None
    n_features: int
    n_skipped: int


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

    def labeler(self) -> Labeler:
        return make_labeler(self.backend, model=self.model, base_url=self.base_url, timeout_s=self.timeout_s,
                            retry=self.retry)

    def run_args(self, labeler: Labeler, **extra: Any) -> dict[str, Any]:
        """What the runs row records about the invocation (never keys; credentials cut from URLs)."""
        return {
            **extra, "backend": self.backend, "model": labeler.model, "base_url": redact_url(self.base_url),
            "concurrency": self.settings.concurrency, "budget_usd": self.settings.budget_usd,
            "threshold": self.settings.threshold, "min_heldout": self.settings.min_heldout,
        }


def resolve_job(
    workspace: Workspace, *, backend: str | None = None, model: str | None = None,
    base_url: str | None = None, concurrency: int | None = None, budget_usd: float | None = None,
    retry: RetryPolicy | None = None,
) -> ResolvedJob:
    """Resolve a job's backend, model and settings. InputError for an unknown backend."""
    config = workspace.load_config().label
    backend_name, reason = backend or config.backend, None
    if backend_name is None:
        backend_name, reason = default_backend()
    if backend_name not in BACKENDS:
        raise InputError(f"unknown backend {backend_name!r}; choose one of {', '.join(BACKENDS)}.")
    same = backend in (None, config.backend)
    settings = JobSettings(
        concurrency=concurrency or config.concurrency,
        budget_usd=budget_usd if budget_usd is not None else config.budget_usd,
        threshold=config.threshold, min_heldout=config.min_heldout,
    )
    return ResolvedJob(
        backend=backend_name, backend_reason=reason, model=model or (config.model if same else None),
        base_url=base_url or (config.base_url if same else None), settings=settings,
        retry=retry or RetryPolicy(max_attempts=config.max_retries + 1, initial_wait=config.retry_wait_s),
        timeout_s=config.timeout_s,
    )


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


def label(
    workspace: Workspace,
    options: LabelOptions,
    *,
    load_examples: LoadExamples | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    on_start: Callable[[JobStart], None] | None = None,
    retry: RetryPolicy | None = None,
) -> JobSummary | DryRun:
    """Run (or dry-run) one labeling job in `workspace`, as `plmlabel label` does.

    A job (not a dry run) holds the workspace lock throughout: LockedError when another job has it.
    `load_examples` defaults to the activation index; `on_start` hears which backend and how many
    features before any request is sent.
    """
    job = resolve_job(workspace, backend=options.backend, model=options.model, base_url=options.base_url,
                      concurrency=options.concurrency, budget_usd=options.budget_usd, retry=retry)
    locked = nullcontext([]) if options.dry_run else labeling_lock(workspace, f"label {options.sae_id}")
    with locked as interrupted, workspace.db() as db:
        plan = plan_features(db, options.sae_id, options.selection)
        loader = load_examples or index_loader(workspace, db, options.sae_id)
        if plan.features:
            loader(plan.features[0])  # no usable index: one clear error now, before a run is recorded
        if options.dry_run:
            return dry_run(sae_id=options.sae_id, features=plan.features, backend=job.backend,
                           model=job.model or BACKENDS[job.backend].default_model, load_examples=loader,
                           n_skipped=len(plan.skipped), backend_reason=job.backend_reason)
        labeler = job.labeler()
        run_args = job.run_args(labeler, features=options.selection.describe(),
                                relabel=options.selection.relabel)
        if on_start is not None:
            on_start(JobStart(sae_id=options.sae_id, backend=labeler.name, model=labeler.model,
                              backend_reason=job.backend_reason, n_features=len(plan.features),
                              n_skipped=len(plan.skipped)))
        summary = asyncio.run(run_job(
            db, sae_id=options.sae_id, features=plan.features, labeler=labeler, load_examples=loader,
            settings=job.settings, run_args=run_args, n_skipped=len(plan.skipped), on_progress=on_progress,
            backend_reason=job.backend_reason,
        ))
        if interrupted:
            summary.warnings.append(interrupted_note(interrupted))
        return summary


def interrupted_note(run_ids: Sequence[str]) -> str:
    return (f"{len(run_ids)} earlier run(s) left 'running' by a killed job marked interrupted: "
            f"{', '.join(run_ids[:5])}" + (", ..." if len(run_ids) > 5 else ""))
