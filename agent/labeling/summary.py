"""What a labeling job reports: one summary type (with optional batch and nightly sections), exit codes.

Exit codes (`exit_code`; `label`, `label --batch` and `label --nightly` use the same):
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

from typing import Literal

from pydantic import BaseModel, Field

from storage.labels import RunStatus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


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


class JobStart(BaseModel):
    """What a job is about to do, told before anything is sent."""

    run_id: str | None = None
    sae_id: str
    backend: str
    model: str
    backend_reason: str | None
    n_features: int
    n_skipped: int


class BatchSection(BaseModel):
    n_submitted: int = 0  # features whose first request this invocation submitted
    n_batches_submitted: int = 0
    n_batches_collected: int = 0


class NightlySection(BaseModel):
    n_new: int = 0
    n_retry: int = 0
    n_stale: int = 0
    n_dead: int = 0


class JobSummary(BaseModel):
    run_id: str
    sae_id: str
    kind: str = "label"
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
    n_in_flight: int = 0  # features in provider batches of this SAE not yet collected, when it ended
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    message: str = ""
    failures: list[FeatureFailure] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    batch: BatchSection | None = None  # set when the run went through the providers' batch APIs
    nightly: NightlySection | None = None  # set for `--nightly`
    exit_code: int = EXIT_OK
    line: str = ""

    @property
    def ok(self) -> bool:
        """No feature failed and the job was not stopped by a failing provider."""
        return self.n_failed == 0 and self.status != "failed"

    def settle(self) -> JobSummary:
        """Fill in exit_code and line from the counters."""
        self.exit_code = exit_code(self)
        self.line = summary_line(self)
        return self


def exit_code(summary: JobSummary) -> int:
    """The process exit code for a finished (or stopped) job; see the module docstring."""
    if summary.status == "interrupted":
        return EXIT_INTERRUPTED
    if not summary.ok:
        return EXIT_FAILED
    if summary.status == "budget_exhausted" and summary.n_not_started > 0:
        return EXIT_BUDGET
    return EXIT_OK


def summary_line(summary: JobSummary) -> str:
    """`nightly demo: 12 labeled (9 validated), 1 failed, 0 left, $0.3100, run ...` (one line)."""
    parts = [
        f"{summary.n_labeled} labeled ({summary.n_validated} validated)",
        f"{summary.n_failed} failed",
        f"{summary.n_not_started} left",
    ]
    if summary.batch is not None:
        parts += [f"submitted {summary.batch.n_submitted}", f"in flight {summary.n_in_flight}"]
    parts.append("cost unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}")
    parts.append(f"run {summary.run_id}")
    kind = "nightly" if summary.nightly is not None else "label"
    line = f"{kind} {summary.sae_id}{' (batch)' if summary.batch is not None else ''}: " + ", ".join(parts)
    if summary.status != "completed":
        line += f" [{summary.status.replace('_', ' ')}]"
    return line
