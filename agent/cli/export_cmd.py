"""`plmlabel export`: an SAE's labels for InterPLM, InterProt, as JSON lines, or as a static HTML viewer."""

from __future__ import annotations

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
from agent.export_bundle import gather_bundle
from storage.export import FORMATS, INTERPLM_FILE, check_out_dir, write_export


@click.command()
@click.argument("sae_id")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="What to write.")
@click.option("--out", "out_dir", type=click.Path(), required=True,
              help="Folder to write (created; an earlier plmlabel export there is replaced, but not "
                   "over files it did not write).")
@click.option("--validated-only", is_flag=True, help="Only labels whose score cleared the threshold.")
@workspace_option
@json_option
def export(sae_id: str, fmt: str, out_dir: str, validated_only: bool, workspace: str | None,
           as_json: bool) -> None:
    """Export the labels of SAE_ID for a viewer: interplm, interprot, jsonl or html."""
    ws = open_workspace(workspace)
    check_out_dir(out_dir)  # fail before reading thousands of examples
    with ws.db() as db, Progress(console=err_console, disable=not progress_enabled(),
                                 transient=True) as progress:
        task = progress.add_task("Exporting features", total=None)
        bundle = gather_bundle(ws, db, sae_id, fmt, validated_only=validated_only, warn=warn,
                               advance=lambda: progress.advance(task))
        progress.update(task, total=len(bundle.features))
        if not len(bundle.features):
            warn(f"SAE {sae_id!r} has no {'validated ' if validated_only else ''}labels to export.")
        result = write_export(bundle, fmt, out_dir)  # features stream in while pages are written
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
