"""`plmlabel index`, `plmlabel feature show`, `plmlabel concepts`: the activation index and its uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.cli._common import (
    console,
    err_console,
    json_option,
    open_workspace,
    print_json,
    progress_enabled,
    workspace_option,
)
from agent.cli.index_render import examples_json, render_feature
from sae.concepts import ConceptReport, ConceptResult, evaluate_sae_concepts, store_concepts
from sae.embed import read_accession_file
from sae.index import ExampleSizes, build_index, load_feature_examples
from sae.stream import StreamOptions


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A stage-aware progress callback on stderr (None when nobody watches)."""
    if not show:
        yield None
        return
    bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err_console, transient=True)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total or None)
        bar.update(tasks[stage], completed=done)

    with bar:
        yield update


def stream_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--from-model/--from-store, --ray [ADDRESS], --workers, --block-residues, --max-tokens."""
    options = [
        click.option("--from-model/--from-store", "from_model", default=None,
                     help="Take embeddings straight from ESM-2 (nothing stored) or from `plmlabel embed`'s "
                          "store (default: the store when one exists, else the model)."),
        click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Run ESM-2 and the SAE on Ray workers (implies --from-model): a cluster's "
                          "address, or none for a local Ray (needs `pip install 'plmlabel[ray]'`)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Ray tasks in flight (default: the cluster's GPUs, else its CPUs / 4)."),
        click.option("--block-residues", type=click.IntRange(min=1), default=None,
                     help="Residues per block of proteins from the model (default: the store's shard size, "
                          "so both give the same index).", hidden=False),
        click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                     help="ESM-2 token budget of one batch (default: [plm] max_tokens)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def make_stream(from_model: bool | None, ray: str | None, workers: int | None, block_residues: int | None,
                max_tokens: int | None) -> StreamOptions:
    if workers is not None and ray is None:
        raise click.UsageError("--workers needs --ray.")
    return StreamOptions(from_model=from_model, ray=ray is not None,
                         ray_address=None if ray in (None, "local") else ray, workers=workers,
                         block_residues=block_residues, max_tokens=max_tokens)


@click.command("index")
@click.argument("sae_id")
@click.option("--proteins", default="all", show_default=True, metavar="all|FILE",
              help="All embedded proteins, or a file with one accession per line.")
@click.option("--seed", type=int, default=None, help="Seed of the example draws (default: [index] seed).")
@click.option("--n-top", type=click.IntRange(min=1), default=None, help="Top proteins per feature.")
@click.option("--per-bin", type=click.IntRange(min=0), default=None,
              help="Proteins per 0.1-wide activation bin.")
@click.option("--n-silent", type=click.IntRange(min=0), default=None, help="Silent proteins per feature.")
@click.option("--n-heldout", type=click.IntRange(min=1), default=None, help="Held-out proteins per feature.")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where ESM-2 and the SAE run; auto = CUDA when present (default: [plm] device).")
@stream_options
@workspace_option
@json_option
def index_command(sae_id: str, proteins: str, seed: int | None, n_top: int | None, per_bin: int | None,
                  n_silent: int | None, n_heldout: int | None, device: str | None, from_model: bool | None,
                  ray: str | None, workers: int | None, block_residues: int | None, max_tokens: int | None,
                  workspace: str | None, as_json: bool) -> None:
    """Run SAE_ID over the proteins' embeddings: per-feature statistics and example sets in index/SAE_ID/."""
    stream = make_stream(from_model, ray, workers, block_residues, max_tokens)
    ws = open_workspace(workspace)
    config = ws.load_config().index
    sizes = ExampleSizes(
        n_top=config.n_top if n_top is None else n_top,
        per_bin=config.per_bin if per_bin is None else per_bin,
        n_silent=config.n_silent if n_silent is None else n_silent,
        n_heldout=config.n_heldout if n_heldout is None else n_heldout,
    )
    accessions = None if proteins == "all" else read_accession_file(proteins)
    with _progress(progress_enabled() and not as_json) as progress:
        summary = build_index(ws, sae_id, accessions=accessions, seed=seed, sizes=sizes, progress=progress,
                              device=device, stream=stream)
    if as_json:
        print_json(summary.model_dump())
        return
    console.print(
        f"Indexed {summary.n_proteins:,} proteins ({summary.n_residues:,} residues) with SAE {sae_id} "
        f"({summary.n_features:,} features, {summary.n_dead_features:,} never fire) into {summary.path} "
        f"in {summary.seconds:.1f} s ({summary.residues_per_s:,.0f} residues/s, embeddings from the "
        f"{'model' if summary.source == 'model' else 'store'}"
        f"{f' on {summary.workers} Ray workers' if ray is not None else ''})."
    )
    if summary.n_skipped:
        console.print(f"{summary.n_skipped:,} embedded proteins are not in the database and were left out.")


@click.group("feature")
def feature_group() -> None:
    """Look at one SAE feature through its activation index."""


@feature_group.command("show")
@click.argument("sae_id")
@click.argument("feature", type=int)
@click.option("--top", "n_shown", type=click.IntRange(min=0), default=5, show_default=True,
              help="Top proteins whose sequences are shown.")
@workspace_option
@json_option
def feature_show(sae_id: str, feature: int, n_shown: int, workspace: str | None, as_json: bool) -> None:
    """Statistics, top proteins and their firing residues for FEATURE of SAE_ID."""
    ws = open_workspace(workspace)
    with ws.db() as db:
        examples = load_feature_examples(ws, db, sae_id, feature)
    if as_json:
        print_json(examples_json(examples))
        return
    for renderable in render_feature(examples, n_shown):
        console.print(renderable)


def _concept_table(title: str, rows: list[ConceptResult]) -> Table:
    table = Table(title=title, title_justify="left", pad_edge=False, caption="P, R, F1: on test proteins",
                  caption_justify="left")
    table.add_column("Concept", overflow="fold")
    for name in ("Prot", "Feat", "Thr", "F1 valid", "P", "R", "F1"):
        table.add_column(name, justify="right", no_wrap=True)

    def num(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    for row in rows:
        table.add_row(row.concept, f"{row.n_proteins:,}",
                      "–" if row.feature is None else str(row.feature),
                      "–" if row.threshold is None else f"{row.threshold:g}", num(row.f1_valid),
                      num(row.precision_test), num(row.recall_test), num(row.f1_test))
    return table


def _render_report(report: ConceptReport, limit: int, stored: int) -> None:
    console.print(_concept_table(
        f"Best feature per Swiss-Prot concept (chosen on {report.n_proteins_valid:,} valid proteins, "
        f"scored on {report.n_proteins_test:,} test proteins)", report.concepts[:limit]))
    if len(report.concepts) > limit:
        console.print(f"... {len(report.concepts) - limit} more concepts (--limit, or --json for all).")
    console.print(_concept_table("Amino acids (reported apart)", report.amino_acids[:5]))
    console.print(
        f"{report.n_concepts_f1_above} of {len(report.concepts)} concepts and "
        f"{report.n_features_f1_above} of {report.n_features:,} features have test F1 > "
        f"{report.f1_cutoff:g}; "
        f"{stored:,} feature-concept associations stored."
    )


@click.command("concepts")
@click.argument("sae_id")
@click.option("--min-proteins", type=click.IntRange(min=1), default=10, show_default=True,
              help="Keep a concept when at least this many indexed proteins carry it.")
@click.option("--seed", type=int, default=None, help="Seed of the valid/test split (default: [index] seed).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Concepts stored per feature.")
@click.option("--limit", type=click.IntRange(min=1), default=30, show_default=True,
              help="Concept rows printed.")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where ESM-2 and the SAE run; auto = CUDA when present (default: [plm] device).")
@stream_options
@workspace_option
@json_option
def concepts_command(sae_id: str, min_proteins: int, seed: int | None, top_k: int, limit: int,
                     device: str | None, from_model: bool | None, ray: str | None, workers: int | None,
                     block_residues: int | None, max_tokens: int | None, workspace: str | None,
                     as_json: bool) -> None:
    """Associate SAE_ID's features with Swiss-Prot concepts (InterPLM's F1 protocol) and store them."""
    stream = make_stream(from_model, ray, workers, block_residues, max_tokens)
    ws = open_workspace(workspace)
    with _progress(progress_enabled() and not as_json) as progress:
        report = evaluate_sae_concepts(
            ws, sae_id, min_proteins=min_proteins, seed=seed, top_k=top_k, device=device, stream=stream,
            progress=(lambda done, total: progress("concepts", done, total)) if progress else None,
        )
    with ws.db() as db:
        stored = store_concepts(db, report)
    if as_json:
        print_json({**report.model_dump(), "stored": stored})
        return
    _render_report(report, limit, stored)


COMMANDS = [index_command, feature_group, concepts_command]
