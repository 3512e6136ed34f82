"""`plmlabel query` (search labels) and `plmlabel show` (one feature in full)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from agent.cli._common import FiniteFloat, console, json_option, open_workspace, print_json, workspace_option
from agent.cli.index_render import colourless
from agent.cli.safe_text import clean, data_text
from agent.cli.trace_render import render_trace
from storage.csv_safe import write_table
from storage.errors import InputError, PlmlabelError
from storage.labels import StoredLabel
from storage.search import LabelHit, LabelQuery, require_label, search_labels
from storage.suggestions import Suggestion, list_suggestions, strip_control
from storage.workspace import Workspace

CSV_COLUMNS = (
    "sae_id", "feature", "label", "pearson", "spearman", "n_heldout", "validated", "status", "description",
)
N_EXAMPLES_SHOWN = 5
WINDOW = 10  # residues shown either side of the strongest firing residue


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def hits_csv(hits: Sequence[LabelHit]) -> str:
    return write_table(CSV_COLUMNS, ([getattr(hit, column) for column in CSV_COLUMNS] for hit in hits))


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _hits_table(hits: Sequence[LabelHit]) -> Table:
    table = Table(pad_edge=False, expand=True)
    table.add_column("SAE", no_wrap=True)
    table.add_column("Feature", justify="right", no_wrap=True)
    table.add_column("Label", ratio=1, min_width=18)
    table.add_column("r", justify="right", no_wrap=True)
    table.add_column("ρ", justify="right", no_wrap=True)
    table.add_column("Valid", no_wrap=True)
    table.add_column("Description", ratio=1, min_width=10, overflow="ellipsis", no_wrap=True)
    for hit in hits:
        label = hit.label if hit.status == "ok" else f"(failed) {hit.label or ''}".strip()
        table.add_row(
            data_text(hit.sae_id), str(hit.feature), data_text(label), _num(hit.pearson), _num(hit.spearman),
            "yes" if hit.validated else "no",
            data_text(hit.description),
        )
    return table


@click.command()
@click.argument("text", required=False, default="")
@click.option("--validated", is_flag=True, help="Only labels whose score cleared the threshold.")
@click.option("--min-score", type=FiniteFloat(), default=None,
              help="Only labels with Pearson r at least this.")
@click.option("--sae", "sae_id", default=None, help="Only labels of this SAE.")
@click.option("--concept", default=None,
              help="Only features with this concept (substring of a label concept or a Swiss-Prot concept).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--include-failed", is_flag=True, help="Also list labels that failed.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the result as CSV.")
@workspace_option
@json_option
def query(text: str, validated: bool, min_score: float | None, sae_id: str | None, concept: str | None,
          limit: int, include_failed: bool, as_csv: bool, workspace: str | None, as_json: bool) -> None:
    """Search labels and descriptions for TEXT (literal words; ranked); no TEXT lists by score."""
    if as_json and as_csv:
        raise InputError("choose one of --json and --csv.")
    request = LabelQuery(text=text, sae_id=sae_id, validated=validated, min_score=min_score,
                         concept=concept, include_failed=include_failed, limit=limit)
    ws = open_workspace(workspace)
    with ws.db() as db:
        hits = search_labels(db, request)
    if as_json:
        print_json([hit.model_dump() for hit in hits])
    elif as_csv:
        table = hits_csv(hits)  # exact text for a file or a pipe; on a terminal, controls shown escaped
        # color=True: click would otherwise strip what looks like ANSI from the exact text of a pipe
        click.echo(clean(table) if _stdout_is_terminal() else table, nl=False, color=True)
    elif not hits:
        console.print(data_text(f"No labels match {text!r}." if text.strip() else "No labels yet."))
    else:
        console.print(_hits_table(hits))


# --- show ----------------------------------------------------------------------------------------------
def _mark(count: int) -> str:
    if count == 0:
        return " "
    if count == 1:
        return "•"
    return str(count) if count < 10 else "#"


def text_scatter(xs: Sequence[float], ys: Sequence[float], *, width: int = 41, height: int = 11,
                 x_max: float = 1.0, y_max: float = 10.0) -> list[str]:
    """A character scatter plot: x (actual, 0..x_max) across, y (predicted, 0..y_max) up.

    A cell shows • for one point, the count for 2-9 and # for more.
    """
    grid = [[0] * width for _ in range(height)]
    for x, y in zip(xs, ys, strict=True):
        col = round(min(max(x / x_max, 0.0), 1.0) * (width - 1))
        row = height - 1 - round(min(max(y / y_max, 0.0), 1.0) * (height - 1))
        grid[row][col] += 1
    labelled = {0, (height - 1) // 2, height - 1}
    lines = []
    for row, cells in enumerate(grid):
        value = y_max * (height - 1 - row) / (height - 1)
        label = f"{value:g}" if row in labelled else ""
        lines.append(f"{label:>5} {'┤' if label else '│'}{''.join(_mark(c) for c in cells)}")
    lines.append("      └" + "─" * width)
    ticks = [" "] * (width + 2)
    for text, col in (("0", 0), (f"{x_max / 2:g}", (width - 1) // 2), (f"{x_max:g}", width - 1)):
        start = max(0, min(col - len(text) // 2, len(ticks) - len(text)))
        ticks[start:start + len(text)] = list(text)
    lines.append("       " + "".join(ticks).rstrip())
    return lines


def _load_examples(ws: Workspace, db: Any, sae_id: str, feature: int) -> tuple[Any, str | None]:
    """The feature's examples from the activation index, or None and the reason there are none."""
    from sae.index import load_feature_examples

    try:
        return load_feature_examples(ws, db, sae_id, feature), None
    except PlmlabelError as exc:
        return None, str(exc)


class ExampleWindow:
    """The residues around an example's peak, firing ones in red; without colour, firing residues
    are put in brackets (`AC[H]G`) so a pipe or a file keeps the marking."""

    def __init__(self, example: Any) -> None:
        self.example = example

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield window_text(self.example, plain=colourless(console))

    def __rich_measure__(self, console: Any, options: Any) -> Measurement:
        return Measurement.get(console, options, window_text(self.example, plain=colourless(console)))


def window_text(example: Any, *, plain: bool) -> Text:
    sequence: str = clean(example.protein.sequence)
    if not example.firing:
        return Text(sequence[: 2 * WINDOW + 1], style="dim")
    peak = max(example.firing, key=lambda r: r.value)
    start = max(1, peak.position - WINDOW)
    end = min(len(sequence), peak.position + WINDOW)
    firing = {r.position for r in example.firing}
    text = Text(f"{start}-{end} ", style="dim")
    for position in range(start, end + 1):
        residue = sequence[position - 1]
        if position not in firing:
            text.append(residue)
        elif plain:
            text.append(f"[{residue}]")
        else:
            text.append(residue, style="bold red")
    return text


def _examples_json(examples: Any) -> list[dict[str, Any]]:
    return [
        {
            "accession": ex.protein.accession,
            "name": ex.protein.protein_name,
            "organism": ex.protein.organism,
            "kind": ex.kind,
            "max_activation": ex.max_activation,
            "normalized": ex.normalized,
            "firing": [[r.position, r.value] for r in ex.firing],
        }
        for ex in examples.examples
    ]


def _render_record(record: StoredLabel) -> None:
    head = Text(f"Feature {record.feature} of SAE ", style="bold")
    head.append(clean(record.sae_id), style="bold cyan")
    head.append(f"  ·  status {record.status}", style="dim")
    console.print(head)
    if record.status != "ok":
        console.print(data_text(f"Labeling failed: {record.error or 'no reason recorded'}", style="red"))
    if record.label:
        console.print(data_text(record.label, style="bold green"))
    if record.description:
        console.print(data_text(record.description))
    if record.concepts:
        console.print(data_text("Concepts: " + ", ".join(record.concepts), style="dim"))
    console.print()
    scores = Text("validated", style="bold green") if record.validated else Text("not validated",
                                                                                  style="yellow")
    per_residue = ""  # shown only where the per-residue pass ran
    if record.residue_pearson is not None:
        per_residue = f"per-residue r {_num(record.residue_pearson)} · "
    scores.append(f" · Pearson r {_num(record.pearson)} · Spearman {_num(record.spearman)} · {per_residue}"
                  f"{record.n_heldout if record.n_heldout is not None else '–'} held-out", style="")
    console.print(scores)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    tokens = (f"{record.input_tokens or 0:,} in / {record.output_tokens or 0:,} out"
              if record.input_tokens is not None or record.output_tokens is not None else "–")
    rows = (
        ("backend", record.backend),
        ("explainer", record.explainer_model),
        ("simulator", record.simulator_model),
        ("explain prompt", _prompt(record.explain_prompt, record.explain_prompt_version)),
        ("simulate prompt", _prompt(record.simulate_prompt, record.simulate_prompt_version)),
        ("tokens", tokens),
        ("cost", f"${record.cost_usd:.4f}" if record.cost_usd is not None else "–"),
        ("run", record.run_id),
        ("created", record.created_at),
    )
    for name, value in rows:
        table.add_row(name, data_text(value or "–"))
    console.print(table)


def _prompt(name: str | None, version: str | None) -> str | None:
    if not name:
        return None
    return f"{name}@{version}" if version else name


def _render_plot(record: StoredLabel) -> None:
    console.print()
    points = [(p.actual, p.predicted) for p in record.predictions if p.actual is not None]
    if not points:
        console.print(Text("No held-out predictions stored.", style="dim"))
        return
    ys = [y for _, y in points]
    console.print(Text(f"Held-out proteins (n={len(ys)}): predicted (up) against actual (across)",
                       style="bold"))
    for line in text_scatter([x for x, _ in points], ys, y_max=max(10.0, max(ys))):
        console.print(Text(line))


def _render_examples(examples: Any, why_not: str | None) -> None:
    console.print()
    if examples is None:
        console.print(data_text(f"No examples: {why_not}", style="dim"), soft_wrap=True)
        return
    shown = sorted((ex for ex in examples.examples if ex.kind != "silent"),
                   key=lambda ex: -ex.max_activation)[:N_EXAMPLES_SHOWN]
    console.print(Text(f"Top examples ({len(shown)} of {len(examples.examples)})", style="bold"))
    table = Table(pad_edge=False, expand=True)
    table.add_column("Accession", no_wrap=True)
    table.add_column("Max", justify="right", no_wrap=True)
    table.add_column("Protein", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("Around the peak (firing in red, or [X])", no_wrap=True)
    for ex in shown:
        protein = ex.protein.protein_name or ex.protein.entry_name or ""
        if ex.protein.organism:
            protein += f" ({ex.protein.organism})"
        table.add_row(data_text(ex.protein.accession), f"{ex.normalized:.2f}", data_text(protein),
                      ExampleWindow(ex))
    console.print(table)


def _render_suggestions(suggestions: Sequence[Suggestion]) -> None:
    """Stored `plmlabel suggest` rows of the feature (data: plain Text, control characters stripped)."""
    if not suggestions:
        return
    console.print()
    console.print(Text(f"Suggested missing annotations ({len(suggestions)}; `plmlabel suggest`)",
                       style="bold"))
    table = Table(pad_edge=False)
    for name in ("Accession", "Concept", "Residues", "Act.", "Score"):
        table.add_column(name)
    for s in suggestions[:10]:
        ranges = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in s.residues) or "–"
        table.add_row(Text(strip_control(s.accession)), Text(strip_control(s.concept)), Text(ranges),
                      f"{s.normalized:.2f}", f"{s.rank_score:.3f}")
    console.print(table)


@click.command()
@click.argument("sae_id")
@click.argument("feature", type=int)
@workspace_option
@json_option
def show(sae_id: str, feature: int, workspace: str | None, as_json: bool) -> None:
    """Show the label of FEATURE of SAE_ID: description, scores, provenance, plot and examples."""
    ws = open_workspace(workspace)
    with ws.db() as db:
        record = require_label(db, sae_id, feature)
        examples, why_not = _load_examples(ws, db, sae_id, feature)
        suggestions = list_suggestions(db, sae_id, feature)
    if as_json:
        data = record.model_dump()
        data["examples"] = None if examples is None else _examples_json(examples)
        data["suggestions"] = [s.as_json() for s in suggestions]
        print_json(data)
        return
    _render_record(record)
    render_trace(console, record.trace, record.oneshot_pearson, record.pearson)
    _render_plot(record)
    _render_examples(examples, why_not)
    _render_suggestions(suggestions)


COMMANDS = [query, show]
