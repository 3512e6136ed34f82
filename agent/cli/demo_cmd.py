"""`plmlabel demo`: the whole pipeline on the bundled sample, drawn with rich."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agent.cli._common import console, err_console, json_option, print_json, progress_enabled, warn
from agent.demo import DemoSettings, DemoSummary, run_demo
from storage.workspace import WORKSPACE_ENV, Workspace


class _RichReporter:
    """Draws one progress bar per stage on stderr; stage headings and warnings stay on screen."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = None

    def stage(self, name: str, detail: str = "") -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        err_console.print(f"[bold cyan]{escape(name)}[/bold cyan] {escape(detail)}", highlight=False,
                          markup=True)
        self._task = self._progress.add_task(name, total=None, text="")

    def progress(self, done: int, total: int | None, text: str = "") -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done, total=total, text=text)

    def warn(self, message: str) -> None:
        warn(message)


def _render(summary: DemoSummary) -> None:
    plm = summary.plm_model
    if summary.plm_random:
        plm += " (RANDOM WEIGHTS: smoke test only)"
    console.print(f"\n[bold]plmlabel demo[/bold] in {escape(summary.workspace)}", markup=True)
    console.print(f"  {summary.n_proteins} proteins, {summary.n_residues:,} residues embedded with {plm}, "
                  f"layer {summary.layer}", highlight=False, soft_wrap=True)
    console.print(f"  SAE {summary.sae_id}: {summary.n_features_alive} live features; Swiss-Prot concepts: "
                  f"{summary.n_concepts_f1_above} found by their best feature at test F1 > 0.5, "
                  f"{summary.n_features_f1_above} features at test F1 > 0.5 on some concept",
                  highlight=False, soft_wrap=True)
    cost = "n/a" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    console.print(f"  labeled {summary.n_labeled} features with {summary.backend} ({summary.label_model}): "
                  f"{summary.n_validated} validated, cost {cost}", highlight=False, soft_wrap=True)
    if summary.backend_reason:
        console.print(f"  ({summary.backend_reason})", highlight=False, soft_wrap=True)
    console.print(f"  chosen by {summary.selection}", highlight=False, soft_wrap=True, markup=False)
    table = Table(title="Best labels (Pearson r on held-out proteins)")
    table.add_column("feature", justify="right")
    table.add_column("label")
    table.add_column("r", justify="right")
    table.add_column("validated")
    table.add_column("picked because")
    for row in summary.best:
        r = "-" if row.pearson is None else f"{row.pearson:.2f}"
        table.add_row(str(row.feature), Text(row.label), r, "yes" if row.validated else "no",
                      Text(row.picked_because))
    console.print(table)
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in summary.seconds.items())
    console.print(f"  time: {timing}", highlight=False)
    console.print(f"\nOpen the viewer: [bold]{escape(summary.viewer)}[/bold]", soft_wrap=True, markup=True)
    console.print(f"Look a label up: plmlabel query zinc --workspace {summary.workspace}",
                  highlight=False, soft_wrap=True)


@click.command()
@click.option("--workspace", "-w", "workspace", type=click.Path(file_okay=False), default="plmlabel-demo",
              show_default=True, help=f"Workspace folder for the demo (not ${WORKSPACE_ENV}: the demo "
              "never writes into your working workspace unless you name it).")
@click.option("--backend", type=click.Choice(["baseline", "anthropic", "openai"]), default=None,
              help="Labeling backend (default: anthropic / openai when their API key is set, else baseline).")
@click.option("--model", default=None, help="LLM model for labeling.")
@click.option("--plm", default=None, help="ESM-2 hub name or checkpoint path (default: esm2_t6_8M_UR50D, "
              "or a random ESM-2 of its shape when its weights cannot be had).")
@click.option("--layer", type=click.IntRange(0), default=None,
              help="ESM-2 layer to embed (default 4 of the 8M model).")
@click.option("--features", "n_label", type=click.IntRange(1), default=48, show_default=True,
              help="How many features to label: the first of `label --select informative`'s ranking "
              "(concept associations first, then activation spread; dead, rare and near-universal left out).")
@json_option
def demo(workspace: str, backend: str | None, model: str | None, plm: str | None, layer: int | None,
         n_label: int, as_json: bool) -> None:
    """Run the whole pipeline on the bundled Swiss-Prot sample and write the HTML viewer."""
    settings = DemoSettings(backend=backend, model=model, plm=plm, layer=layer, n_label=n_label)
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[text]}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, disable=not progress_enabled()) as progress:
        summary = run_demo(Workspace(workspace), _RichReporter(progress), settings)
    if as_json:
        print_json(summary.model_dump(mode="json"))
    else:
        _render(summary)


COMMANDS = [demo]
