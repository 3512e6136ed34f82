"""`plmlabel label SAE_ID`: explain, simulate and score features, storing every label.

Also the unattended forms: `--nightly` (what is new or stale, one summary line, exit codes a
scheduler can act on) and `--batch` (the providers' batch APIs). All three are one job set-up in
agent/labeling/setup.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.backends import BACKENDS
from agent.cli._common import (
    FiniteFloat,
    console,
    err_console,
    json_option,
    open_workspace,
    print_json,
    progress_enabled,
    sigterm_interrupts,
    warn,
    workspace_option,
)
from agent.labeling.batch import BatchSettings
from agent.labeling.estimate import DryRun
from agent.labeling.selection import SELECT_KINDS, FeatureSelection, exclusive_error, parse_feature_spec
from agent.labeling.setup import LabelOptions, label
from agent.labeling.summary import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, JobStart, JobSummary, ProgressEvent
from storage.errors import InputError, JobFailedError

_FAILURES_SHOWN = 10


def _money(value: float | None) -> str:
    return "unknown (no price)" if value is None else f"${value:.4f}"


def _render_dry_run(report: DryRun) -> None:
    shown_system: set[str] = set()
    for feature in report.features:
        for request in feature.requests:
            console.rule(f"feature {feature.feature}: {request.stage} "
                         f"(~{request.input_tokens:,} tokens in, ~{request.output_tokens:,} out)")
            if request.system in shown_system:
                console.print("[dim](system prompt as above)[/dim]", markup=True)
            else:
                shown_system.add(request.system)
                console.print("[bold]system:[/bold]", markup=True)
                console.print(request.system, markup=False, soft_wrap=True)
            console.print("[bold]user:[/bold]", markup=True)
            console.print(request.user, markup=False, soft_wrap=True)
    console.rule()
    console.print(
        f"{len(report.features)} features ({report.n_skipped} already labeled, skipped) with "
        f"{report.backend} ({report.model}): ~{report.input_tokens:,} input and "
        f"~{report.output_tokens:,} output tokens, estimated cost {_money(report.cost_usd)}. "
        "Nothing was sent.", soft_wrap=True,
    )
    console.print(f"[dim]{escape(report.note)}[/dim]", soft_wrap=True, markup=True)
    if report.n_skipped and not report.features:
        console.print("Add --relabel to see the prompts of features that already have a label.")


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
    if summary.batch is not None:
        rows[5:5] = [("submitted", f"{summary.batch.n_submitted} (in {summary.batch.n_batches_submitted} "
                                   "batches)"), ("in flight", str(summary.n_in_flight))]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for failure in summary.failures[:_FAILURES_SHOWN]:
        console.print(f"  feature {failure.feature} failed: {failure.error}", markup=False, soft_wrap=True)
    if len(summary.failures) > _FAILURES_SHOWN:
        console.print(f"  ... and {len(summary.failures) - _FAILURES_SHOWN} more failures")
    console.print(summary.message, markup=False, soft_wrap=True)


_EXIT_CODES = """\b
Exit codes (for schedulers):
  0    all selected work done, or nothing to do (--batch: work in flight is fine)
  1    some features failed (reasons stored; --nightly retries them) or the provider
       kept failing
  2    usage or input error (bad flags, unknown SAE, no index, missing API key)
  3    the budget ran out with work left (the next run continues)
  4    another job holds the workspace lock; nothing was done
  130  interrupted (Ctrl-C or SIGTERM); everything stored stays
"""


@click.command("label", epilog=_EXIT_CODES)
@click.argument("sae_id")
@click.option("--features", "features", metavar="IDS", help="Feature ids and ranges, e.g. 0-99,120.")
@click.option("--all", "all_", is_flag=True,
              help="Every indexed feature (labeled ones skipped unless --relabel).")
@click.option("--unlabeled", is_flag=True,
              help="Indexed features without an ok label (new, or failed before).")
@click.option("--top", type=click.IntRange(min=1), metavar="N",
              help="The N live features with the largest fraction of indexed proteins they fire on (ties: "
                   "higher max activation, then lower id). These are often the least specific features; "
                   "for the ones worth labeling use --select informative.")
@click.option("--select", "select", type=click.Choice(SELECT_KINDS),
              help="informative: live features firing on at least 40 proteins and at most 90% of them, "
                   "those with a concept association (test F1 >= 0.5, `plmlabel concepts`) first, by F1, "
                   "then by activation spread; prints how it chose.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="Keep the first N of the selection (ids ascending, or --select's ranking).")
@click.option("--relabel", is_flag=True, help="Label again features that already have an ok label.")
@click.option("--nightly", is_flag=True,
              help="Unattended run: label what is new or failed before (and stale, with --relabel-stale), "
                   "print one summary line.")
@click.option("--relabel-stale", is_flag=True,
              help="With --nightly: also relabel labels made with another prompt version or model.")
@click.option("--batch", is_flag=True,
              help="Use the provider's batch API (half price): collect ended batches, submit new work, "
                   "return (or --wait).")
@click.option("--wait", is_flag=True, help="With --batch: poll until every batch is collected.")
@click.option("--poll-interval", type=FiniteFloat(min=0, min_open=True), metavar="SECONDS",
              help="With --batch --wait: seconds between polls (default 60).")
@click.option("--backend", type=click.Choice(list(BACKENDS)),
              help="Default: anthropic if ANTHROPIC_API_KEY is set, else openai if OPENAI_API_KEY, "
                   "else baseline.")
@click.option("--model", help="Model name (default: [label] model in plmlabel.toml, else the backend's).")
@click.option("--base-url", help="Server URL, e.g. an OpenAI-compatible server (vLLM, Ollama, LM Studio).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Features labeled at once.")
@click.option("--budget-usd", type=FiniteFloat(min=0), help="Stop starting features past this spend.")
@click.option("--residue-pass", is_flag=True,
              help="Also predict per-residue activations on sequence windows of a few held-out proteins "
                   "(residue_pearson; one more request per feature, in the estimate and the budget).")
@click.option("--agent", "agent", is_flag=True,
              help="After the first explanation, an agent tests hypotheses on the validation half with tools "
                   "over the index and commits the best (its trace is stored). With --batch the agent's own "
                   "requests are sent at once, at full price; explain and the final scoring go in batches.")
@click.option("--max-tool-calls", type=click.IntRange(min=1), metavar="N",
              help="With --agent: tool calls per feature (default: [agent] max_tool_calls).")
@click.option("--max-simulations", type=click.IntRange(min=1), metavar="N",
              help="With --agent: validation trials per feature (default: [agent] max_simulations).")
@click.option("--max-turns", type=click.IntRange(min=1), metavar="N",
              help="With --agent: model turns per feature (default: [agent] max_turns).")
@click.option("--dry-run", is_flag=True, help="Print the prompts and the estimated cost; send nothing.")
@workspace_option
@json_option
def label_command(sae_id: str, features: str | None, all_: bool, unlabeled: bool, top: int | None,
                  select: str | None, limit: int | None, relabel: bool, nightly: bool, relabel_stale: bool,
                  batch: bool, wait: bool, poll_interval: float | None, backend: str | None,
                  model: str | None, base_url: str | None, concurrency: int | None, budget_usd: float | None,
                  residue_pass: bool, agent: bool, max_tool_calls: int | None, max_simulations: int | None,
                  max_turns: int | None, dry_run: bool, workspace: str | None, as_json: bool) -> None:
    """Label features of SAE_ID: explain -> simulate on held-out proteins -> score -> store.

    Each label is stored as soon as it is done; rerunning skips features already labeled, so an
    interrupted job loses nothing. Every labeling job holds the workspace lock, so two never run
    at once.

    --nightly picks the features itself (never labeled, failed before, and with --relabel-stale
    labels of another prompt version or model) and prints one summary line; with --batch it goes
    through the provider's batch API: each run first collects ended batches, then submits new
    work, and returns (cron) or, with --wait, polls until all is collected.
    """
    _check_flags(features=features, all_=all_, unlabeled=unlabeled, top=top, select=select, limit=limit,
                 relabel=relabel, nightly=nightly, relabel_stale=relabel_stale, batch=batch, wait=wait,
                 poll_interval=poll_interval, dry_run=dry_run)
    ws = open_workspace(workspace)
    batch_settings = None
    if batch:
        interval = {"poll_interval_s": poll_interval} if poll_interval is not None else {}
        batch_settings = BatchSettings(wait=wait, **interval)
    selection = None if nightly else FeatureSelection(
        features=parse_feature_spec(features) if features is not None else None,
        all=all_, unlabeled=unlabeled, top=top, select=select, limit=limit, relabel=relabel,
    )
    options = LabelOptions(sae_id=sae_id, selection=selection, nightly=nightly, relabel_stale=relabel_stale,
                           backend=backend, model=model, base_url=base_url, concurrency=concurrency,
                           budget_usd=budget_usd, residue_pass=residue_pass, batch=batch_settings,
                           dry_run=dry_run, agent=agent, max_tool_calls=max_tool_calls,
                           max_simulations=max_simulations, max_turns=max_turns)
    started: list[JobStart] = []
    with _progress(show_bar=batch_settings is None) as (on_start, on_progress), sigterm_interrupts():
        try:
            result = label(ws, options, on_progress=on_progress, on_event=_event,
                           on_start=lambda start: (started.append(start), on_start(start)))
        except KeyboardInterrupt:
            _interrupted(ws, started)
    if isinstance(result, DryRun):
        if as_json:
            print_json(result.model_dump())
        else:
            _render_dry_run(result)
        return
    summary = result
    if nightly:
        _finish_nightly(summary, as_json)
        return
    for message in summary.warnings:
        warn(message)
    if as_json:
        print_json({**summary.model_dump(), "ok": summary.ok})
    else:
        _render_summary(summary)
    code = summary.exit_code
    if code == EXIT_FAILED:
        raise JobFailedError(
            f"{summary.n_failed} of {summary.n_requested} features failed; {summary.message}."
            if summary.n_failed else f"the job stopped: {summary.message}."
        )
    if code != EXIT_OK:
        err_console.print(summary.message, markup=False, soft_wrap=True)
        raise SystemExit(code)


def _check_flags(*, features: str | None, all_: bool, unlabeled: bool, top: int | None, select: str | None,
                 limit: int | None, relabel: bool, nightly: bool, relabel_stale: bool, batch: bool,
                 wait: bool, poll_interval: float | None, dry_run: bool) -> None:
    """Flag combinations that make no sense: one clear usage error (exit code 2)."""
    selectors = [name for name, given in (("--features", features is not None), ("--all", all_),
                                          ("--unlabeled", unlabeled), ("--top", top is not None),
                                          ("--select", select is not None)) if given]
    if len(selectors) > 1:
        raise exclusive_error(selectors)
    chosen = selectors + (["--limit"] if limit is not None else []) + (["--relabel"] if relabel else [])
    if nightly and chosen:
        raise InputError(f"--nightly chooses the features itself; drop {', '.join(chosen)}.")
    if nightly and dry_run:
        raise InputError("--dry-run cannot be combined with --nightly; try --unlabeled --dry-run.")
    if relabel_stale and not nightly:
        raise InputError("--relabel-stale goes with --nightly (for a chosen set, use --relabel).")
    if batch and dry_run:
        raise InputError("--dry-run and --batch cannot be combined; drop --batch to see the prompts.")
    if (wait or poll_interval is not None) and not batch:
        raise InputError("--wait and --poll-interval go with --batch.")


def _interrupted(ws: object, started: list[JobStart]) -> None:
    """Ctrl-C or SIGTERM: say what the run kept (its runs row, closed on the way out) and exit 130."""
    from storage.labels import get_run

    if not started or started[-1].run_id is None:
        err_console.print("interrupted before anything was sent; nothing was stored.", markup=False)
        raise SystemExit(EXIT_INTERRUPTED)
    with ws.db() as db:  # type: ignore[attr-defined]
        run = get_run(db, started[-1].run_id)
    stored = run.n_labeled + run.n_failed if run else 0
    err_console.print(f"interrupted: {stored} labels stored by run {started[-1].run_id} "
                      f"({run.n_labeled if run else 0} ok); rerun the same command to continue "
                      "where it stopped.", markup=False, soft_wrap=True)
    raise SystemExit(EXIT_INTERRUPTED)




@contextmanager
def _progress(show_bar: bool = True
              ) -> Iterator[tuple[Callable[[JobStart], None], Callable[[ProgressEvent], None]]]:
    """The `backend: ...` line, then a progress bar with the running cost (stderr, when a person watches)."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[cost]}"), TimeElapsedColumn(),
        console=err_console, disable=not (show_bar and progress_enabled()), transient=False,
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
        yield on_start, on_progress
    finally:
        progress.stop()


def _event(message: str) -> None:
    err_console.print(message, markup=False, soft_wrap=True)


def _finish_nightly(summary: JobSummary, as_json: bool) -> None:
    """The summary (one line, or JSON) on stdout; warnings and failures on stderr; the exit code."""
    for message in summary.warnings:
        warn(message)
    for failure in summary.failures[:_FAILURES_SHOWN]:
        err_console.print(f"feature {failure.feature} failed: {failure.error}", markup=False, soft_wrap=True)
    if len(summary.failures) > _FAILURES_SHOWN:
        err_console.print(f"... and {len(summary.failures) - _FAILURES_SHOWN} more failures")
    if summary.status != "completed":
        err_console.print(summary.message, markup=False, soft_wrap=True)
    if as_json:
        print_json({**summary.model_dump(), "ok": summary.ok})
    else:
        click.echo(summary.line)
    if summary.exit_code != EXIT_OK:
        raise SystemExit(summary.exit_code)


COMMANDS = [label_command]
