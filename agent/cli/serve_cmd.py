"""`plmlabel serve`: browse a workspace's labels and paste sequences, in a local web app."""

from __future__ import annotations

import ipaddress

import click

from agent.cli._common import err_console, open_workspace, warn, workspace_option
from storage.errors import ConfigError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines read the workspace.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--max-residues", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="Longest pasted sequence read (longer ones are refused with a message).")
@click.option("--max-body", "max_body", type=click.IntRange(1024, 16 << 20), default=64 * 1024,
              show_default=True, help="Largest form post in bytes.")
@workspace_option
def serve(host: str, port: int, max_residues: int, max_body: int, workspace: str | None) -> None:
    """Serve the workspace's SAEs, labels and suggestions at http://HOST:PORT (read-only).

    Search labels, open a feature (scores, examples, suggestions) or paste a sequence to see which
    features fire where; the database is only read, so a labeling job may run meanwhile.
    """
    try:
        import uvicorn

        from agent.serve.app import create_app
        from agent.serve.limits import Limits
    except ImportError as exc:
        raise ConfigError(f"serve needs its web packages ({exc.name} is missing); install them with "
                          "`pip install 'plmlabel[serve]'`.") from exc
    ws = open_workspace(workspace)
    if not _loopback(host):
        warn(f"listening on {host}: every machine that can reach it can read this workspace's labels.")
    hosts = ["127.0.0.1", "localhost", "[::1]"] + ([] if _loopback(host) else ["*"])
    limits = Limits(max_residues=max_residues, max_body_bytes=max_body)
    app = create_app(ws, limits=limits, allowed_hosts=hosts)
    err_console.print(f"Serving {ws.root} at http://{host}:{port}/ (Ctrl-C stops)", markup=False,
                      highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


COMMANDS = [serve]
