"""`plmlabel export`: an SAE's labels for InterPLM, InterProt, as JSON lines, or as a static HTML viewer."""

from __future__ import annotations

from typing import Any

import click
from rich.progress import Progress

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
from storage.errors import PlmlabelError
from storage.export import (
    FORMATS,
    INTERPLM_FILE,
    ExportBundle,
    ExportExample,
    check_out_dir,
    load_bundle,
    write_export,
)
from storage.workspace import Workspace

# The formats that carry example sequences (the others are label tables).
WITH_EXAMPLES = ("interprot", "html")


def export_examples(examples: Any) -> list[ExportExample]:
    """FeatureExamples (sae.index) -> the plain examples storage/export.py writes, activations dense."""
    converted = []
    for ex in examples.examples:
        sequence = ex.protein.sequence
        activations = [0.0] * len(sequence)
        for residue in ex.firing:
            if 1 <= residue.position <= len(sequence):
                activations[residue.position - 1] = float(residue.value)
        converted.append(
            ExportExample(
                accession=ex.protein.accession,
                name=ex.protein.protein_name or ex.protein.entry_name,
                organism=ex.protein.organism,
                sequence=sequence,
                kind=ex.kind,
                max_activation=ex.max_activation,
                normalized=ex.normalized,
                activations=activations,
            )
        )
    return converted


def attach_examples(ws: Workspace, db: Any, bundle: ExportBundle) -> list[str]:
    """Fill each feature's examples from the activation index; returns why features had none."""
    from sae.index import load_feature_examples

    problems: list[str] = []
    with Progress(console=err_console, disable=not progress_enabled(), transient=True) as progress:
        task = progress.add_task("Reading examples", total=len(bundle.features))
        for feature in bundle.features:
            try:
                examples = load_feature_examples(ws, db, bundle.sae.sae_id, feature.record.feature)
            except PlmlabelError as exc:
                problems.append(str(exc))
            else:
                feature.examples = export_examples(examples)
                if examples.n_indexed:
                    feature.n_active = round(examples.frac_proteins * examples.n_indexed)
            progress.advance(task)
    bundle.has_examples = True
    return problems


def _index_problem(ws: Workspace, sae_id: str) -> str | None:
    from sae.index import open_index

    try:
        open_index(ws, sae_id)
    except PlmlabelError as exc:
        return str(exc)
    return None


@click.command()
@click.argument("sae_id")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="What to write.")
@click.option("--out", "out_dir", type=click.Path(), required=True,
              help="Folder to write (created; an earlier plmlabel export there is replaced).")
@click.option("--validated-only", is_flag=True, help="Only labels whose score cleared the threshold.")
@workspace_option
@json_option
def export(sae_id: str, fmt: str, out_dir: str, validated_only: bool, workspace: str | None,
           as_json: bool) -> None:
    """Export the labels of SAE_ID for a viewer: interplm, interprot, jsonl or html."""
    ws = open_workspace(workspace)
    check_out_dir(out_dir)  # fail before reading thousands of examples
    with ws.db() as db:
        bundle = load_bundle(db, sae_id, validated_only=validated_only)
        if fmt in WITH_EXAMPLES:
            problem = _index_problem(ws, sae_id)
            if problem:
                warn(f"{problem.rstrip('.')}; exporting labels without example sequences.")
            else:
                problems = attach_examples(ws, db, bundle)
                if problems:
                    warn(f"{len(problems)} feature(s) have no examples ({problems[0].rstrip('.')}).")
    if not bundle.features:
        warn(f"SAE {sae_id!r} has no {'validated ' if validated_only else ''}labels to export.")
    result = write_export(bundle, fmt, out_dir)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    where = result.out_dir / "index.html" if fmt == "html" else result.out_dir
    console.print(f"Exported {result.n_features} label(s) of {sae_id} as {fmt} to {where}",
                  markup=False, highlight=False, soft_wrap=True)
    if fmt == "interplm":
        layer = "L" if bundle.sae.layer is None else bundle.sae.layer
        console.print(f"InterPLM reads it from its dashboard cache: copy {INTERPLM_FILE} into "
                      f"<dashboard_cache>/<name>/layer_{layer}/.",
                      markup=False, highlight=False, soft_wrap=True)


COMMANDS = [export]
