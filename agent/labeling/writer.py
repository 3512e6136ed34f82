"""The one writer of a labeling run: the only code that writes labels.

    writer = RunWriter(db, sae_id=..., kind="label", labeler=..., settings=..., n_requested=...)
    writer.start()                       # the runs row ('running')
    writer.reserve(estimate, left=n)     # budget: may this feature start? (False: the run stops)
    writer.spend(usage, cost)            # what the provider billed this run
    writer.store(outcome)                # a label, or failed-with-reason, in its own transaction
    summary = writer.close(status)       # the runs row closed, a JobSummary

Both transports (agent/labeling/sync.py, agent/labeling/batch.py) hand every outcome to it, so the
rules are the same for both:

- Store: an ok label replaces any earlier label; a failure is stored with its reason unless the
  feature already has an ok label (that one is kept, and the failure says so). Each outcome is its
  own transaction (a batch joins it to closing its batch), so a job killed at any point keeps
  everything stored before.
- Stop rules, the first one wins: a fatal error (bad key, unknown model, an index that cannot be
  read), `max_consecutive_failures` failures in a row, the budget (spent + reserved estimates of
  work in flight may not pass it), an interrupt. Stopping means starting (or submitting) nothing
  new; work in flight is finished and stored.
- Money: `spend` counts what this run was billed (a batch run: the answers it collected); the
  budget, the runs row, the summary and every message show that one figure.
- Secrets: every message stored or shown passes through `redact`, which cuts the provider's
  configured key (a proxy may echo it in an error body).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from agent.labeling.protocol import Outcome, add_cost
from agent.labeling.summary import BatchSection, FeatureFailure, JobSummary, ProgressEvent
from agent.llm import Usage
from storage.db import Database
from storage.errors import ConfigError
from storage.labels import (
    LabelRecord,
    RunRecord,
    RunStatus,
    finish_run,
    new_run_id,
    save_failure,
    save_label,
    start_run,
)


class JobSettings(BaseModel):
    concurrency: int = Field(4, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    threshold: float = 0.5
    min_heldout: int = Field(10, ge=2)
    max_consecutive_failures: int = Field(5, ge=1)
    residue_pass: bool = False


class RunWriter:
    """Owns one runs row from start to end: stores outcomes, tallies, budget, stop rules, progress."""

    def __init__(
        self,
        db: Database,
        *,
        sae_id: str,
        kind: str,
        labeler: Any,
        settings: JobSettings,
        n_requested: int,
        n_skipped: int = 0,
        run_args: dict[str, Any] | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        batch: bool = False,
    ) -> None:
        self.db, self.sae_id, self.kind, self.labeler, self.settings = db, sae_id, kind, labeler, settings
        self.n_requested, self.n_skipped, self.run_args = n_requested, n_skipped, run_args or {}
        self.on_progress = on_progress
        self.run_id = new_run_id()
        self.priced = labeler.priced
        self.usage = Usage()
        self.cost: float | None = 0.0 if self.priced else None
        self.reserved = 0.0
        self.labeled = self.validated = self.failed = self.done = self.not_started = 0
        self.consecutive_failures = 0
        self.failures: list[FeatureFailure] = []
        self.warnings: dict[str, None] = {}
        self.stop_status: RunStatus | None = None
        self._stop_reason: Callable[[], str] | None = None
        self.batch = BatchSection() if batch else None
        self.n_in_flight = 0

    # --- the run row -------------------------------------------------------------------------------
    def start(self) -> str:
        """Check the budget can be enforced, then write the runs row. ConfigError refuses the run."""
        if not self.priced:
            if self.settings.budget_usd is not None:
                raise ConfigError(
                    f"no price is known for model {self.labeler.model!r}, so --budget-usd cannot "
                    "be enforced; drop --budget-usd or add the model to agent/pricing.py."
                )
            self.warn(
                f"no price is known for model {self.labeler.model!r}: labels are stored with cost null."
            )
        start_run(
            self.db,
            RunRecord(
                run_id=self.run_id,
                sae_id=self.sae_id,
                kind=self.kind,
                backend=self.labeler.name,
                model=self.labeler.model,
                args=self.run_args,
                n_requested=self.n_requested,
                n_skipped=self.n_skipped,
            ),
        )
        return self.run_id

    def close(self, status: RunStatus | None = None, *, backend_reason: str | None = None) -> JobSummary:
        """Close the runs row. `status`: 'interrupted' or 'failed' when the run ended by an exception."""
        final: RunStatus = status or self.stop_status or "completed"
        message = self.message(final)
        finish_run(
            self.db,
            self.run_id,
            status=final,
            n_labeled=self.labeled,
            n_failed=self.failed,
            n_skipped=self.n_skipped,
            input_tokens=self.usage.total_input,
            output_tokens=self.usage.output_tokens,
            cost_usd=self.cost,
            message=message,
        )
        return JobSummary(
            run_id=self.run_id,
            sae_id=self.sae_id,
            kind=self.kind,
            status=final,
            backend=self.labeler.name,
            model=self.labeler.model,
            backend_reason=backend_reason,
            n_requested=self.n_requested,
            n_labeled=self.labeled,
            n_validated=self.validated,
            n_failed=self.failed,
            n_skipped=self.n_skipped,
            n_not_started=self.not_started,
            n_in_flight=self.n_in_flight,
            input_tokens=self.usage.total_input,
            output_tokens=self.usage.output_tokens,
            cost_usd=self.cost,
            message=message,
            failures=self.failures,
            warnings=list(self.warnings),
            batch=self.batch,
        )

    def message(self, status: RunStatus) -> str:
        parts = [
            f"{self.labeled} labeled ({self.validated} validated), {self.failed} failed of {self.n_requested}"
        ]
        if self.batch is not None:
            parts.append(f"submitted {self.batch.n_submitted}, in flight {self.n_in_flight}")
        if status == "interrupted":
            if self.batch is not None:
                parts.append("interrupted; batches in flight are collected by the next run")
            else:
                left = self.n_requested - self.done
                parts.append(f"interrupted; {left} features not finished (rerun to continue)")
        elif self._stop_reason is not None:
            parts.append(self._stop_reason())
        return self.redact("; ".join(parts))

    # --- money -------------------------------------------------------------------------------------
    def spend(self, usage: Usage, cost: float | None) -> None:
        self.usage = self.usage + usage
        self.cost = add_cost(self.cost, cost)

    def reserve(self, estimate: float | None, *, left: int, batch: bool = False) -> bool:
        """May work estimated at `estimate` start? False stops the run (budget), `left` not started."""
        limit = self.settings.budget_usd
        estimate = estimate or 0.0
        if limit is not None and (self.cost or 0.0) + self.reserved + estimate > limit:
            self.not_started += left
            price = " at batch price" if batch else ""

            def reason() -> str:  # worded when the run ends, with the run's final spend
                return (
                    f"budget of ${limit:.2f} reached (spent ${self.cost or 0.0:.4f}; the next feature "
                    f"would cost about ${estimate:.4f}{price}); {left} features not started"
                )

            self.stop("budget_exhausted", reason)
            return False
        self.reserved += estimate
        return True

    def release(self, estimate: float | None) -> None:
        """The reserved work ended (its actual cost came in through `spend`)."""
        self.reserved = max(0.0, self.reserved - (estimate or 0.0))

    # --- outcomes ----------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self.stop_status is not None

    def stop(self, status: RunStatus, reason: str | Callable[[], str]) -> None:
        """The first stop wins."""
        if self.stop_status is None:
            self.stop_status = status
            self._stop_reason = reason if callable(reason) else (lambda: reason)

    def warn(self, message: str) -> None:
        self.warnings[self.redact(message)] = None

    def redact(self, text: str) -> str:
        redact = getattr(self.labeler.llm, "redact", None)
        return redact(text) if redact is not None else text

    def store(self, outcome: Outcome) -> None:
        """Write one outcome (its own transaction, or the caller's), count it, apply the stop rules."""
        record = self.record(outcome)
        self.done += 1
        if outcome.ok:
            save_label(self.db, record, outcome.predictions)
            self.labeled += 1
            self.validated += int(bool(outcome.score and outcome.score.validated))
            self.consecutive_failures = 0
        else:
            kept = not save_failure(self.db, record)
            reason = record.error or "unknown error"
            shown = reason + (" (the earlier ok label was kept)" if kept else "")
            self.failures.append(FeatureFailure(feature=outcome.feature, error=shown))
            self.failed += 1
            self.consecutive_failures += 1
            limit = self.settings.max_consecutive_failures
            if outcome.fatal or self.consecutive_failures >= limit:
                why = "a fatal error" if outcome.fatal else f"{self.consecutive_failures} failures in a row"
                self.stop("failed", f"stopped after {why}: {reason}")
        if self.on_progress is not None:
            self.on_progress(
                ProgressEvent(
                    feature=outcome.feature,
                    status="ok" if outcome.ok else "failed",
                    done=self.done,
                    total=self.n_requested,
                    cost_usd=self.cost,
                    label=outcome.explanation.label if outcome.explanation else None,
                )
            )

    def record(self, outcome: Outcome) -> LabelRecord:
        """The labels row of an outcome (ok or failed) with its provenance."""
        versions = outcome.prompt_versions or self.labeler.prompt_versions
        model = self.labeler.model
        common: dict[str, Any] = {
            "sae_id": self.sae_id,
            "feature": outcome.feature,
            "backend": self.labeler.name,
            "explainer_model": model,
            "simulator_model": model,
            "explain_prompt": "explain" if versions.get("explain") else None,
            "explain_prompt_version": versions.get("explain"),
            "simulate_prompt": "simulate" if versions.get("simulate") else None,
            "simulate_prompt_version": versions.get("simulate"),
            "residue_prompt_version": versions.get("residues") if outcome.n_residues else None,
            "input_tokens": outcome.usage.total_input,
            "output_tokens": outcome.usage.output_tokens,
            "cost_usd": outcome.cost_usd if self.priced else None,
            "run_id": self.run_id,
            "trace": json.dumps(outcome.trace) if outcome.trace is not None else None,
            "oneshot_pearson": outcome.test_pearson,
        }
        if not outcome.ok:
            return LabelRecord(status="failed", error=self.redact(outcome.error or "unknown error"), **common)
        explanation, result = outcome.explanation, outcome.score
        assert explanation is not None and result is not None
        return LabelRecord(
            status="ok",
            label=explanation.label,
            description=explanation.description,
            concepts=list(explanation.concepts),
            confidence=explanation.confidence,
            pearson=result.pearson,
            spearman=result.spearman,
            residue_pearson=outcome.residue_pearson,
            n_heldout=result.n,
            validated=result.validated,
            **common,
        )
