"""`plmlabel suggest`: proteins a trusted feature says carry a concept Swiss-Prot does not list."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agent.cli._common import (
    console,
    err_console,
    json_option,
    open_workspace,
    print_json,
    progress_enabled,
    workspace_option,
)
from sae.suggest import store_suggestions, suggest
from sae.suggest_score import TRUST_MODES
from storage.errors import InputError
from storage.suggestions import Suggestion, suggestions_gff3, suggestions_tsv

N_SHOWN = 50


def _ranges(s: Suggestion) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in s.residues) or "–"


def render_suggestions(items: list[Suggestion], *, title: str | None = None, limit: int = N_SHOWN) -> None:
    """A table of suggestions (text is data: Text cells, never markup)."""
    table = Table(title=title, pad_edge=False)
    for name, justify in (("Feature", "right"), ("Accession", "left"), ("Concept", "left"),
                          ("Residues", "left"), ("Act.", "right"), ("F1", "right"), ("Label", "left"),
                          ("Score", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in items[:limit]:
        ev = s.evidence
        label = ev.label
        if ev.label and ev.label_score is not None:
            label = f"{ev.label} (r {ev.label_score:.2f})"
        table.add_row(str(s.feature), Text(s.accession), Text(s.concept), Text(_ranges(s)),
                      f"{s.normalized:.2f}",
                      "–" if ev.f1 is None else f"{ev.f1:.2f}", Text(label or "–"), f"{s.rank_score:.3f}")
    console.print(table)
    if len(items) > limit:
        console.print(Text(f"... and {len(items) - limit} more (--json, --tsv or --gff3 for all)",
                           style="dim"))


@click.command("suggest")
@click.argument("sae_id")
@click.option("--feature", "features", type=int, multiple=True, help="Only this feature (repeatable).")
@click.option("--min-f1", type=float, default=0.5, show_default=True,
              help="Trust a concept association whose test-split F1 is at least this.")
@click.option("--by", "mode", type=click.Choice(TRUST_MODES), default="either", show_default=True,
              help="f1: concept associations; label: validated labels naming the concept; both; either.")
@click.option("--carrier-quantile", type=float, default=0.1, show_default=True,
              help="A suggestion fires at least as strongly as this quantile of the annotated proteins.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Keep the best N suggestions.")
@click.option("--tsv", "as_tsv", is_flag=True, help="Print tab-separated values (spreadsheet-safe).")
@click.option("--gff3", "gff3_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the suggestions as GFF3 to this file ('-' = stdout).")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where the SAE runs; auto = CUDA when present (default: [plm] device).")
@workspace_option
@json_option
def suggest_command(sae_id: str, features: tuple[int, ...], min_f1: float, mode: str, carrier_quantile: float,
                    limit: int | None, as_tsv: bool, gff3_path: str | None, device: str | None,
                    workspace: str | None, as_json: bool) -> None:
    """Suggest missing Swiss-Prot annotations from the features of SAE_ID that track a concept.

    Stored in the database (replacing this SAE's earlier suggestions); Swiss-Prot data is never changed.
    """
    if as_json and as_tsv:
        raise InputError("choose one of --json and --tsv.")
    if gff3_path == "-" and (as_json or as_tsv):
        raise InputError("--gff3 - prints to stdout; it cannot be combined with --json or --tsv.")
    ws = open_workspace(workspace)
    bar = Progress(TextColumn("finding residues"), BarColumn(), MofNCompleteColumn(), TextColumn("proteins"),
                   TimeElapsedColumn(), console=err_console, transient=True, disable=not progress_enabled())
    with bar:
        task = bar.add_task("residues", total=None)
        report = suggest(ws, sae_id, features=list(features) or None, min_f1=min_f1,
                         mode=mode,  # type: ignore[arg-type]
                         carrier_quantile=carrier_quantile, limit=limit, device=device,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    with ws.db() as db:
        store_suggestions(db, report)
        lengths = {}
        if gff3_path is not None:
            from storage.proteins import get_proteins

            found = get_proteins(db, {s.accession for s in report.suggestions})
            lengths = {a: p.length for a, p in found.items()}
    if gff3_path is not None:
        text = suggestions_gff3(report.suggestions, lengths)
        if gff3_path == "-":
            click.echo(text, nl=False)
            return
        Path(gff3_path).write_text(text)
    if as_json:
        print_json([s.as_json() for s in report.suggestions])
    elif as_tsv:
        click.echo(suggestions_tsv(report.suggestions), nl=False)
    else:
        render_suggestions(report.suggestions, title=f"{len(report.suggestions)} suggestions from "
                           f"{len(report.features)} trusted features of {sae_id}")


COMMANDS = [suggest_command]
