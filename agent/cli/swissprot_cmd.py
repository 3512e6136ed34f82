"""`plmlabel swissprot`: import UniProt files or REST queries into the workspace, and look at them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType

import click
from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

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
from agent.cli.safe_text import data_text
from storage.errors import NotFoundError
from storage.protein import Protein, ProteinFeature
from storage.proteins import ImportResult, get_protein, import_files, import_proteins, protein_stats
from storage.swissprot import RecordError, UniProtReader
from storage.uniprot_rest import DEFAULT_BASE_URL, fetch_entries

_SHOWN_WARNINGS = 20


class _Reporter:
    """Stderr reporting for an import: every bad record, the first warnings, a progress bar."""

    def __init__(self) -> None:
        self.warnings = 0
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
            TimeElapsedColumn(), console=err_console, disable=not progress_enabled(),
        )
        self._tasks: dict[str, int] = {}
        self._done: dict[int, str] = {}

    def record_error(self, error: RecordError) -> None:
        err_console.print(f"[yellow]skipped:[/yellow] {escape(str(error))}", soft_wrap=True, highlight=False,
                          markup=True)

    def warning(self, message: str) -> None:
        self.warnings += 1
        if self.warnings <= _SHOWN_WARNINGS:
            warn(message)

    def file_progress(self, reader: UniProtReader, done: int) -> None:
        key = str(reader.path)
        if key not in self._tasks:
            self._tasks[key] = self.progress.add_task(reader.path.name, total=reader.size)
        task = self._tasks[key]
        self._done[task] = f"{reader.path.name}: {done:,} entries"
        if done % 50 == 0:
            self.progress.update(task, completed=reader.bytes_read, description=self._done[task])

    def count_progress(self, items: Iterable[Protein | RecordError],
                       label: str) -> Iterator[Protein | RecordError]:
        task = self.progress.add_task(label, total=None)
        for done, item in enumerate(items, 1):
            if isinstance(item, RecordError):
                self.record_error(item)
            self.progress.update(task, description=f"{label}: {done:,} entries")
            yield item

    def __enter__(self) -> _Reporter:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            for task in self.progress.tasks:
                if task.total is not None:
                    self.progress.update(task.id, completed=task.total,
                                         description=self._done.get(task.id, task.description))
        self.progress.__exit__(kind, exc, tb)
        if self.warnings > _SHOWN_WARNINGS:
            warn(f"{self.warnings - _SHOWN_WARNINGS:,} more warnings like these not shown "
                 f"({self.warnings:,} in all).")


def _summary(result: ImportResult, as_json: bool) -> None:
    if as_json:
        print_json(result.counts())
        return
    line = (f"{result.total:,} proteins read: {result.imported:,} imported, {result.updated:,} updated, "
            f"{result.unchanged:,} unchanged")
    if result.errors:
        line += f"; {len(result.errors):,} bad records skipped"
    console.print(line + ".")


@click.group()
def swissprot() -> None:
    """Load UniProt / Swiss-Prot entries into the workspace and look at them."""


@swissprot.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--strict", is_flag=True, help="Abort, changing nothing, at the first bad record.")
@workspace_option
@json_option
def import_command(files: tuple[str, ...], strict: bool, workspace: str | None, as_json: bool) -> None:
    """Import UniProt files: flat .dat/.txt (any era), XML, REST JSON or REST TSV, gzipped or not.

    The format is read from the content. Entries are upserted by accession: re-importing changes
    nothing. All files go in one transaction; a file that cannot be read changes nothing. Bad records
    are skipped and reported (or, with --strict, abort the import).
    """
    ws = open_workspace(workspace)
    with ws.db() as db, _Reporter() as reporter:
        result = import_files(db, files, strict=strict, on_record_error=reporter.record_error,
                              on_warning=reporter.warning, on_progress=reporter.file_progress)
    _summary(result, as_json)


@swissprot.command("fetch")
@click.option("--query", "-q", required=True, help='A UniProtKB query, e.g. "reviewed:true AND gene:TP53".')
@click.option("--limit", "-n", type=click.IntRange(min=1), default=None, help="Stop after N entries.")
@click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True, envvar="PLMLABEL_UNIPROT_URL",
              help="The UniProt REST server.")
@workspace_option
@json_option
def fetch_command(query: str, limit: int | None, base_url: str, workspace: str | None, as_json: bool) -> None:
    """Fetch entries from the UniProt REST API and import them (all or nothing)."""
    ws = open_workspace(workspace)
    with ws.db() as db, _Reporter() as reporter:
        entries = fetch_entries(query, limit=limit, base_url=base_url, on_warning=reporter.warning)
        result = import_proteins(db, reporter.count_progress(entries, "UniProt"), source_format="rest-json")
    _summary(result, as_json)


@swissprot.command("stats")
@workspace_option
@json_option
def stats_command(workspace: str | None, as_json: bool) -> None:
    """Count the stored proteins and their features by type."""
    ws = open_workspace(workspace)
    with ws.db() as db:
        stats = protein_stats(db)
    if as_json:
        print_json(stats)
        return
    table = Table(title=f"{stats['proteins']:,} proteins, {stats['features']:,} features")
    table.add_column("feature type")
    table.add_column("count", justify="right")
    for name, count in stats["by_type"].items():
        table.add_row(name, f"{count:,}")
    console.print(table)


@swissprot.command("show")
@click.argument("accession")
@workspace_option
@json_option
def show_command(accession: str, workspace: str | None, as_json: bool) -> None:
    """Show one stored protein: names, organism, function, keywords and features."""
    ws = open_workspace(workspace)
    with ws.db() as db:
        protein = get_protein(db, accession.strip().upper())
    if protein is None:
        raise NotFoundError(f"no protein {accession} in the workspace; import it with "
                            "`plmlabel swissprot import` or `fetch`.")
    if as_json:
        print_json(protein.model_dump(mode="json"))
    else:
        console.print(render_protein(protein))


def _location(feature: ProteinFeature) -> str:
    def one(value: int | None, modifier: str | None) -> str:
        return f"{modifier or ''}{'' if value is None else value}"

    start, end = one(feature.start, feature.start_modifier), one(feature.end, feature.end_modifier)
    return start if start == end else f"{start}..{end}"


def render_protein(protein: Protein) -> Panel:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("name", protein.protein_name or "-")
    organism = protein.organism or "-"
    facts.add_row("organism", f"{organism} (taxon {protein.taxon_id})" if protein.taxon_id else organism)
    facts.add_row("length", f"{protein.length:,} residues")
    facts.add_row("function", protein.function or "-")
    facts.add_row("keywords", ", ".join(protein.keywords) or "-")
    parts: list[Table | Text] = [facts]
    if protein.features:
        features = Table(title=f"{len(protein.features)} features", expand=True)
        for name in ("type", "position", "description", "ligand", "evidence"):
            features.add_column(name, overflow="fold")
        for feature in protein.features:
            features.add_row(feature.type, _location(feature), feature.description or "",
                             feature.ligand or "", " ".join(feature.evidence))
        parts.append(features)
    else:
        parts.append(Text("no features", style="dim"))
    title = protein.accession + (f" · {protein.entry_name}" if protein.entry_name else "")
    return Panel(Group(*parts), title=data_text(title), title_align="left")  # a str title is markup


COMMANDS = [swissprot]
