"""`plmlabel swissprot`: import UniProt files or REST queries into the workspace, and look at them."""

from __future__ import annotations

from collections import Counter
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
from storage.errors import JobFailedError, NotFoundError
from storage.protein import Protein, ProteinFeature
from storage.proteins import ImportResult, get_protein, import_files, import_proteins, protein_stats
from storage.swissprot import RecordError, UniProtReader
from storage.uniprot_rest import DEFAULT_BASE_URL, fetch_entries

_SHOWN_WARNINGS = 20

# Warnings every real UniProt file gives (93 for the 1,033-entry sample): counted by kind, listed with
# --verbose. Any other warning is shown (the first _SHOWN_WARNINGS of them).
_NORMAL_WARNINGS = {
    "lies on another sequence; dropped": "features on other isoforms",
}


def _normal_kind(message: str) -> str | None:
    return next((kind for tail, kind in _NORMAL_WARNINGS.items() if message.endswith(tail)), None)


class _Reporter:
    """Stderr reporting for an import, written once it succeeded (a refused import prints only its error).

    Bad records and warnings are collected while parsing; at the end: the unusual warnings (the first
    ones), one line per kind of normal warning with its count, and (with `verbose`) every skipped record
    and every warning.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.warnings: list[str] = []
        self.record_errors: list[RecordError] = []
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
            TimeElapsedColumn(), console=err_console, disable=not progress_enabled(),
        )
        self._tasks: dict[str, int] = {}
        self._done: dict[int, str] = {}

    def record_error(self, error: RecordError) -> None:
        self.record_errors.append(error)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

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
        if kind is None:
            self._report()

    def _report(self) -> None:
        if self.verbose:
            for error in self.record_errors:
                err_console.print(f"[yellow]skipped:[/yellow] {escape(str(error))}", soft_wrap=True,
                                  markup=True)
            for message in self.warnings:
                warn(message)
            return
        unusual = [m for m in self.warnings if _normal_kind(m) is None]
        for message in unusual[:_SHOWN_WARNINGS]:
            warn(message)
        if len(unusual) > _SHOWN_WARNINGS:
            hidden = len(unusual) - _SHOWN_WARNINGS
            warn(f"{hidden:,} more warnings like these not shown ({len(unusual):,} in all; --verbose lists "
                 "them).")
        normal = Counter(_normal_kind(m) for m in self.warnings if _normal_kind(m) is not None)
        for name, count in normal.items():
            err_console.print(f"note: {count:,} {name} dropped (only canonical sequences are stored; normal "
                              "for UniProt files, --verbose lists them).", soft_wrap=True)


def _summary(result: ImportResult, as_json: bool) -> None:
    """The counts on stdout; a partial import then ends with one line and exit code 1."""
    if as_json:
        print_json({**result.counts(), "skipped": len(result.errors)})
    else:
        line = (f"{result.total:,} proteins read: {result.imported:,} imported, {result.updated:,} updated, "
                f"{result.unchanged:,} unchanged")
        if result.errors:
            line += f"; {len(result.errors):,} bad records skipped"
        console.print(line + ".")
    if result.errors:
        skipped, first = len(result.errors), result.errors[0]
        raise JobFailedError(
            f"partial import: {skipped:,} of {result.total + skipped:,} records skipped "
            f"(the first: {first}); the others were stored. --verbose lists every skipped record, --strict "
            "imports nothing when any record is bad.")


@click.group()
def swissprot() -> None:
    """Load UniProt / Swiss-Prot entries into the workspace and look at them."""


@swissprot.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--strict", is_flag=True, help="Abort, changing nothing, at the first bad record.")
@click.option("--verbose", "-v", is_flag=True, help="List every skipped record and every warning.")
@workspace_option
@json_option
def import_command(files: tuple[str, ...], strict: bool, verbose: bool, workspace: str | None,
                   as_json: bool) -> None:
    """Import UniProt files: flat .dat/.txt (any era), XML, REST JSON or REST TSV, gzipped or not.

    The format is read from the content. Entries are upserted by accession: re-importing changes
    nothing. All files go in one transaction; a file that cannot be read changes nothing. Bad records
    are skipped, the good ones stored, and the import exits 1 with a one-line summary (with --strict a
    bad record aborts the import, exit 2). Exit 0 means every record was imported.
    """
    ws = open_workspace(workspace)
    with ws.db() as db, _Reporter(verbose) as reporter:
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
