"""`plmlabel embed`: per-residue ESM-2 embeddings of the workspace's proteins."""

from __future__ import annotations

import sys
from contextlib import nullcontext

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agent.cli._common import (
    console,
    err_console,
    json_option,
    open_workspace,
    print_json,
    progress_enabled,
    sigterm_interrupts,
    workspace_option,
)
from sae.embed import EmbedInterrupted, RayOptions, embed_proteins, read_accession_file
from sae.embed_sample import parse_sample_size


@click.command()
@workspace_option
@click.option("--model", "model", default=None, metavar="NAME_OR_PATH",
              help="ESM-2 hub name (e.g. esm2_t6_8M_UR50D) or a fair-esm checkpoint .pt "
                   "(default: [plm] model in plmlabel.toml).")
@click.option("--layer", type=int, default=None,
              help="Layer to embed: 0 = token embeddings, L = last (default: [plm] layer).")
@click.option("--proteins", default="all", show_default=True, metavar="all|FILE",
              help="All proteins of the workspace, or a file with one accession per line.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Token budget of one batch, padding included (default: [plm] max_tokens).")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="auto = CUDA when present (default: [plm] device).")
@click.option("--dtype", default=None, type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
              help="auto = fp32 on CPU, fp16 on CUDA (default: [plm] dtype).")
@click.option("--shard-residues", type=click.IntRange(min=1), default=None,
              help="Residues per new shard file (default: the size this store was planned with, "
                   "else about 128 MiB of fp16 per shard).")
@click.option("--sample-residues", "sample", default=None, metavar="N|FRACTION",
              help="Keep only a uniform random sample of the residues (a count, or a fraction such as 0.05): "
                   "enough to train an SAE on, without storing every residue.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample-residues.")
@click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run ESM-2 on Ray workers, a shard a task: a cluster's address, or none for a local Ray "
                   "(needs `pip install 'plmlabel[ray]'`).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray tasks in flight (default: the cluster's GPUs, else its CPUs / 4).")
@json_option
def embed(workspace: str | None, model: str | None, layer: int | None, proteins: str,
          max_tokens: int | None, device: str | None, dtype: str | None, shard_residues: int | None,
          sample: str | None, seed: int, ray: str | None, workers: int | None, as_json: bool) -> None:
    """Write ESM-2 layer embeddings of the proteins to embeddings/<model>/layer_<L>/ (resumable)."""
    if workers is not None and ray is None:
        raise click.UsageError("--workers needs --ray.")
    sample_size = parse_sample_size(sample) if sample is not None else None
    address = None if ray in (None, "local") else ray
    ray_options = None if ray is None else RayOptions(address=address, workers=workers)
    ws = open_workspace(workspace)
    plm = ws.load_config().plm
    accessions = None if proteins == "all" else read_accession_file(proteins)
    show = progress_enabled() and not as_json
    bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("residues"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
    task = bar.add_task("embed", total=None)

    def report(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    try:
        with sigterm_interrupts(), bar if show else nullcontext():
            summary = embed_proteins(
                ws, model or plm.model, plm.layer if layer is None else layer, accessions,
                max_tokens or plm.max_tokens, device or plm.device, dtype or plm.dtype,
                progress=report if show else None, shard_residues=shard_residues,
                sample_residues=sample_size, seed=seed, ray=ray_options,
            )
    except EmbedInterrupted as stop:
        err_console.print(f"interrupted: {stop.n_done:,} of {stop.n_proteins:,} proteins are embedded "
                          f"({stop.n_shards:,} finished shards); run the same command again to continue.",
                          markup=False, highlight=False, soft_wrap=True)
        sys.exit(130)
    if as_json:
        print_json(summary.model_dump())
        return
    if summary.n_sampled is not None:
        console.print(
            f"Sampled {summary.n_sampled:,} of the {summary.n_residues:,} residues of {summary.n_proteins:,} "
            f"proteins (seed {summary.seed}) with {summary.model} layer {summary.layer} into {summary.path}: "
            f"{summary.n_shards} shard(s), {summary.seconds:.1f} s; `plmlabel sae train` reads them."
        )
        return
    written = summary.n_shards - summary.n_skipped_shards
    console.print(
        f"Embedded {summary.n_proteins:,} proteins ({summary.n_residues:,} residues) with {summary.model} "
        f"layer {summary.layer} into {summary.path}: {written} shard(s) written, "
        f"{summary.n_skipped_shards} already done, {summary.seconds:.1f} s."
    )


COMMANDS = [embed]
