"""`plmlabel sae import|train|eval|list`: bring in, train and judge SAEs."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from agent.cli._common import (
    FiniteFloat,
    console,
    err_console,
    json_option,
    open_workspace,
    print_json,
    progress_enabled,
    workspace_option,
)
from sae.evaluate import evaluate_in_workspace
from sae.importers import FORMATS, import_into_workspace
from sae.model import REGISTRY
from sae.train import train_in_workspace
from storage.saes import SaeRecord, list_saes


def _model_layer(ws, model: str | None, layer: int | None) -> tuple[str, int]:
    plm = ws.load_config().plm
    return model or plm.model, plm.layer if layer is None else layer


def _record_json(record: SaeRecord) -> dict:
    return record.model_dump()


@click.group()
def sae() -> None:
    """Import, train, evaluate and list sparse autoencoders."""


model_option = click.option("--model", default=None, metavar="NAME_OR_PATH",
                            help="ESM-2 the SAE reads (default: [plm] model in plmlabel.toml).")
_TRAINABLE = [key for key, (_, model_class) in REGISTRY.items() if model_class.trainable]
layer_option = click.option("--layer", type=click.IntRange(min=0), default=None,
                            help="ESM-2 layer the SAE reads (default: [plm] layer).")


@sae.command("import")
@workspace_option
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="interplm: ae_normalized.pt or its run folder; interprot: .safetensors, .pt or a "
              "Lightning .ckpt; saelens: a folder.")
@click.option("--name", "sae_id", required=True, help="Name of the SAE in this workspace.")
@model_option
@layer_option
@click.option("--k", type=click.IntRange(min=1), default=None,
              help="InterProt only: k when neither the checkpoint, the file name nor a known release "
              "says it.")
@click.option("--force", is_flag=True, help="Replace an SAE of the same name (its labels and concept "
              "scores are deleted, they describe the old weights; rebuild its index).")
@json_option
def import_(workspace: str | None, path: str, fmt: str, sae_id: str, model: str | None, layer: int | None,
            k: int | None, force: bool, as_json: bool) -> None:
    """Import an SAE published as InterPLM, InterProt or SAELens files."""
    ws = open_workspace(workspace)
    model, layer = _model_layer(ws, model, layer)
    record = import_into_workspace(ws, path, fmt, sae_id, model=model, layer=layer, k=k, force=force)
    if as_json:
        print_json(_record_json(record))
        return
    console.print(
        f"Imported {record.sae_id}: {record.architecture}, d_in {record.d_in}, d_sae {record.d_sae}"
        f"{f', k {record.k}' if record.k else ''}, {record.plm_model} layer {record.layer}."
    )


@sae.command()
@workspace_option
@click.option("--name", "sae_id", required=True, help="Name of the new SAE.")
@model_option
@layer_option
@click.option("--arch", "architecture", required=True, type=click.Choice(_TRAINABLE),
              help="SAE architecture.")
@click.option("--d-sae", type=click.IntRange(min=1), required=True, help="Number of features.")
@click.option("--k", type=click.IntRange(min=1), default=None,
              help="Active features per residue for topk/batchtopk (default 32).")
@click.option("--l1", type=FiniteFloat(min=0), default=None, help="relu: L1 coefficient (default 5).")
@click.option("--l0", type=FiniteFloat(min=0), default=None,
              help="jumprelu: L0 coefficient (default 1).")
@click.option("--tokens", type=click.IntRange(min=1), default=10_000_000, show_default=True,
              help="Residues to train on (the embeddings are looped over as often as needed).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=3e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Steps between checkpoints (0: only when interrupted).")
@click.option("--resume", is_flag=True, help="Continue an interrupted training of this name.")
@click.option("--force", is_flag=True, help="Replace an SAE (or unfinished training) of this name (its "
              "labels and concept scores are deleted, they describe the old weights; rebuild its index).")
@json_option
def train(workspace: str | None, sae_id: str, model: str | None, layer: int | None, architecture: str,
          d_sae: int, k: int | None, l1: float | None, l0: float | None, tokens: int, batch_size: int,
          lr: float, seed: int, device: str, checkpoint_every: int, resume: bool, force: bool,
          as_json: bool) -> None:
    """Train an SAE on the workspace's embeddings (run `plmlabel embed` first)."""
    ws = open_workspace(workspace)
    model, layer = _model_layer(ws, model, layer)
    show = progress_enabled() and not as_json
    bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                   TextColumn("loss {task.fields[loss]:.4g}  L0 {task.fields[l0]:.1f}  "
                              "dead {task.fields[dead]:.0%}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
    task = bar.add_task("train", total=None, loss=float("nan"), l0=float("nan"), dead=0.0)

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        bar.update(task, completed=step, total=total, loss=metrics["loss"], l0=metrics["l0"],
                   dead=metrics["dead_fraction"])

    with bar if show else nullcontext():
        record, result = train_in_workspace(
            ws, sae_id, model=model, layer=layer, architecture=architecture, d_sae=d_sae, k=k,
            l1_coefficient=l1, l0_coefficient=l0, tokens=tokens, batch_size=batch_size, lr=lr, seed=seed,
            resume=resume, force=force, checkpoint_every=checkpoint_every, device=device,
            progress=report if show else None,
        )
    if as_json:
        print_json({"sae": _record_json(record), "training": result.model_dump(exclude={"history"})})
        return
    resumed = f" (resumed at step {result.resumed_from_step:,})" if result.resumed_from_step else ""
    console.print(
        f"Trained {record.sae_id} ({record.architecture}, d_sae {record.d_sae}) on {result.tokens:,} "
        f"residues in {result.steps:,} steps{resumed}: loss {result.final.get('loss', float('nan')):.4g}, "
        f"FVU {result.final.get('fvu', float('nan')):.3f}, L0 {result.final.get('l0', float('nan')):.1f}, "
        f"dead {result.dead_fraction:.1%}, {result.seconds:.1f} s."
    )


@sae.command("eval")
@workspace_option
@click.argument("sae_id")
@click.option("--proteins", "n_proteins", type=click.IntRange(min=1), default=100, show_default=True,
              help="Held-out proteins to evaluate on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Protein sample and LM masking.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda")
@click.option("--no-loss-recovered", "skip_lm", is_flag=True,
              help="Skip the ESM-2 part (loss recovered); reconstruction metrics only.")
@json_option
def eval_(workspace: str | None, sae_id: str, n_proteins: int, seed: int, device: str, skip_lm: bool,
          as_json: bool) -> None:
    """MSE, variance explained, L0, dead features and masked-LM loss recovered of an SAE."""
    ws = open_workspace(workspace)
    show = progress_enabled() and not as_json
    bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)
    task = bar.add_task("eval", total=None)

    def report(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar if show else nullcontext():
        result = evaluate_in_workspace(ws, sae_id, n_proteins=n_proteins, seed=seed,
                                       loss_recovered=not skip_lm, device=device,
                                       progress=report if show else None)
    if as_json:
        print_json(result.model_dump())
        return
    title = f"{sae_id}: {result.describe_proteins()}, {result.n_tokens:,} residues"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    dead = f"{result.dead_fraction:.4g} over these {result.n_tokens:,} residues"
    rows = [("MSE", result.mse), ("variance explained", result.fve), ("L0", result.l0),
            ("dead fraction (fire on no residue)", dead)]
    rows += [("loss recovered", result.loss_recovered),
            ("CE clean / SAE / zero", None if result.ce_clean is None else
             f"{result.ce_clean:.4f} / {result.ce_sae:.4f} / {result.ce_zero:.4f}")]
    for name, value in rows:
        table.add_row(name, "-" if value is None else value if isinstance(value, str) else f"{value:.4g}")
    console.print(table)
    if result.index_dead_fraction is not None:
        console.print(f"dead fraction in the index (same definition): {result.index_dead_fraction:.4g} "
                      f"over its {result.index_n_tokens:,} residues of {result.index_n_proteins:,} proteins; "
                      "fewer residues here leave more features silent.", soft_wrap=True)


@sae.command("list")
@workspace_option
@json_option
def list_(workspace: str | None, as_json: bool) -> None:
    """The workspace's SAEs."""
    ws = open_workspace(workspace)
    with ws.db() as db:
        records = list_saes(db)
    if as_json:
        print_json([_record_json(record) for record in records])
        return
    if not records:
        console.print("No SAEs yet: run `plmlabel sae train` or `plmlabel sae import`.")
        return
    table = Table()
    for column in ("name", "arch", "d_in", "d_sae", "k", "model", "layer", "source", "FVE", "L0",
                   "loss rec."):
        table.add_column(column, overflow="fold")

    def fmt(value: object) -> str:
        return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    for r in records:
        m = r.metrics or {}
        model = Path(r.plm_model).name if r.plm_model else None
        table.add_row(r.sae_id, r.architecture, str(r.d_in), str(r.d_sae), fmt(r.k), fmt(model),
                      fmt(r.layer), r.source, fmt(m.get("fve")), fmt(m.get("l0")),
                      fmt(m.get("loss_recovered")))
    console.print(table)


COMMANDS = [sae]
