"""The `plmlabel` command: parse, call the library, render. No logic of its own.

Errors the user can cause (storage.errors.PlmlabelError) end as one line on stderr and a non-zero
exit code; nothing here prints a traceback for them.
"""

from __future__ import annotations

import sys

import click

from agent.cli._common import err_console
from storage.errors import PlmlabelError

COMMAND_MODULES = [
    "agent.cli.workspace_cmd",
    "agent.cli.swissprot_cmd",
    "agent.cli.embed_cmd",
    "agent.cli.sae_cmd",
    "agent.cli.index_cmd",
    "agent.cli.label_cmd",
    "agent.cli.query_cmd",
    "agent.cli.export_cmd",
    "agent.cli.demo_cmd",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plmlabel")
def cli() -> None:
    """plmlabel: name the features of protein-language-model sparse autoencoders with an LLM."""


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not built yet
                continue
            raise
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="plmlabel", standalone_mode=False)
    except PlmlabelError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("[red]aborted[/red]")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"[red]error:[/red] {exc.strerror or exc}{where}", soft_wrap=True)
        sys.exit(1)
    else:
        sys.exit(0)
