"""`plmlabel init`: create a workspace."""

from __future__ import annotations

import click

from agent.cli._common import console, json_option, open_workspace, print_json, workspace_option


@click.command()
@workspace_option
@json_option
def init(workspace: str | None, as_json: bool) -> None:
    """Create plmlabel.toml and plmlabel.db in the workspace folder (safe to rerun)."""
    ws = open_workspace(workspace, require=False)
    created = ws.init()
    if as_json:
        print_json({"workspace": str(ws.root), "created": created})
    elif created:
        console.print(f"Created workspace {ws.root} ({ws.config_path.name}, {ws.db_path.name}).")
    else:
        console.print(f"Workspace {ws.root} already exists; database checked and up to date.")


COMMANDS = [init]
