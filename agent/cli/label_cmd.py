"""`plmlabel label SAE_ID`: explain, simulate and score features, storing every label."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.backends import BACKENDS
from agent.cli._common import (
    console,
    err_console,
    json_option,
    open_workspace,
    print_json,
    progress_enabled,
    warn,
    workspace_option,
)
from agent.job import (
    DryRun,
    FeatureSelection,
    JobStart,
    JobSummary,
    LabelOptions,
    ProgressEvent,
    label,
    parse_feature_spec,
)
from storage.errors import JobFailedError

_FAILURES_SHOWN = 10


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the job like Ctrl-C: work in flight is abandoned, everything stored stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _money(value: float | None) -> str:
    return "unknown (no price)" if value is None else f"${value:.4f}"


def _render_dry_run(report: DryRun) -> None:
    shown_system: set[str] = set()
    for feature in report.features:
        for request in feature.requests:
            console.rule(f"feature {feature.feature}: {request.stage} "
                         f"(~{request.input_tokens:,} tokens in, ~{request.output_tokens:,} out)")
            if request.system in shown_system:
                console.print("[dim](system prompt as above)[/dim]")
            else:
                shown_system.add(request.system)
                console.print("[bold]system:[/bold]")
                console.print(request.system, markup=False, soft_wrap=True)
            console.print("[bold]user:[/bold]")
            console.print(request.user, markup=False, soft_wrap=True)
    console.rule()
    console.print(
        f"{len(report.features)} features ({report.n_skipped} already labeled, skipped) with "
        f"{report.backend} ({report.model}): ~{report.input_tokens:,} input and "
        f"~{report.output_tokens:,} output tokens, estimated cost {_money(report.cost_usd)}. "
        "Nothing was sent.", soft_wrap=True,
    )
    console.print(f"[dim]{report.note}[/dim]", soft_wrap=True)


def _render_summary(summary: JobSummary) -> None:
    table = Table(title=f"label run {summary.run_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("status", summary.status),
        ("backend", f"{summary.backend} ({summary.model})"),
        ("labeled", f"{summary.n_labeled} ({summary.n_validated} validated)"),
        ("failed", str(summary.n_failed)),
        ("skipped", f"{summary.n_skipped} (already labeled)"),
        ("not started", str(summary.n_not_started)),
        ("tokens", f"{summary.input_tokens:,} in, {summary.output_tokens:,} out"),
        ("cost", _money(summary.cost_usd)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for failure in summary.failures[:_FAILURES_SHOWN]:
        console.print(f"  feature {failure.feature} failed: {failure.error}", markup=False, soft_wrap=True)
    if len(summary.failures) > _FAILURES_SHOWN:
        console.print(f"  ... and {len(summary.failures) - _FAILURES_SHOWN} more failures")
    console.print(summary.message, markup=False, soft_wrap=True)


@click.command("label")
@click.argument("sae_id")
@click.option("--features", "features", metavar="IDS", help="Feature ids and ranges, e.g. 0-99,120.")
@click.option("--all", "all_", is_flag=True,
              help="Every indexed feature (labeled ones skipped unless --relabel).")
@click.option("--unlabeled", is_flag=True,
              help="Indexed features without an ok label (new, or failed before).")
@click.option("--top", type=click.IntRange(min=1), metavar="N",
              help="The N live features that fire on the most proteins (ties: higher max activation).")
@click.option("--relabel", is_flag=True, help="Label again features that already have an ok label.")
@click.option("--backend", type=click.Choice(list(BACKENDS)),
              help="Default: anthropic if ANTHROPIC_API_KEY is set, else openai if OPENAI_API_KEY, "
                   "else baseline.")
@click.option("--model", help="Model name (default: [label] model in plmlabel.toml, else the backend's).")
@click.option("--base-url", help="Server URL, e.g. an OpenAI-compatible server (vLLM, Ollama, LM Studio).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Features labeled at once.")
@click.option("--budget-usd", type=click.FloatRange(min=0), help="Stop starting features past this spend.")
@click.option("--dry-run", is_flag=True, help="Print the prompts and the estimated cost; send nothing.")
@workspace_option
@json_option
def label_command(sae_id: str, features: str | None, all_: bool, unlabeled: bool, top: int | None,
                  relabel: bool, backend: str | None, model: str | None, base_url: str | None,
                  concurrency: int | None, budget_usd: float | None, dry_run: bool, workspace: str | None,
                  as_json: bool) -> None:
    """Label features of SAE_ID: explain -> simulate on held-out proteins -> score -> store.

    Each label is stored as soon as it is done; rerunning skips features already labeled, so an
    interrupted job loses nothing. Exit code 1 when features failed (their reasons are stored).
    """
    ws = open_workspace(workspace)
    selection = FeatureSelection(
        features=parse_feature_spec(features) if features is not None else None,
        all=all_, unlabeled=unlabeled, top=top, relabel=relabel,
    )
    options = LabelOptions(sae_id=sae_id, selection=selection, backend=backend, model=model,
                           base_url=base_url, concurrency=concurrency, budget_usd=budget_usd, dry_run=dry_run)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[cost]}"), TimeElapsedColumn(),
        console=err_console, disable=not progress_enabled(), transient=False,
    )
    task_id = None

    def on_start(start: JobStart) -> None:
        nonlocal task_id
        reason = f" ({start.backend_reason})" if start.backend_reason else ""
        err_console.print(f"backend: {start.backend}, model {start.model}{reason}; "
                          f"{start.n_features} features to label, {start.n_skipped} already labeled",
                          markup=False, soft_wrap=True)
        progress.start()
        task_id = progress.add_task("labeling", total=start.n_features, cost="$0.0000")

    def on_progress(event: ProgressEvent) -> None:
        if task_id is not None:
            progress.update(task_id, completed=event.done, cost=_money(event.cost_usd))

    try:
        with _sigterm_interrupts():
            result = label(ws, options, on_progress=on_progress, on_start=on_start)
    finally:
        progress.stop()
    if isinstance(result, DryRun):
        if as_json:
            print_json(result.model_dump())
        else:
            _render_dry_run(result)
        return
    summary = result
    for message in summary.warnings:
        warn(message)
    if as_json:
        print_json({**summary.model_dump(), "ok": summary.ok})
    else:
        _render_summary(summary)
    if not summary.ok:
        raise JobFailedError(
            f"{summary.n_failed} of {summary.n_requested} features failed; {summary.message}."
        )


COMMANDS = [label_command]
