"""The `plmlabel` command: parse, call the library, render. No logic of its own.

Command modules are imported only when their command runs (`LazyGroup`), so `plmlabel query` or
`plmlabel --help` never pay for importing torch. Errors the user can cause
(storage.errors.PlmlabelError) end as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import sqlite3
import sys

import click
from rich.markup import escape

from agent.cli._common import err_console
from storage.errors import PlmlabelError

# command name -> the module that defines it (in its COMMANDS list)
COMMAND_MODULES: dict[str, str] = {
    "init": "agent.cli.workspace_cmd",
    "swissprot": "agent.cli.swissprot_cmd",
    "embed": "agent.cli.embed_cmd",
    "sae": "agent.cli.sae_cmd",
    "index": "agent.cli.index_cmd",
    "feature": "agent.cli.index_cmd",
    "concepts": "agent.cli.index_cmd",
    "label": "agent.cli.label_cmd",
    "query": "agent.cli.query_cmd",
    "show": "agent.cli.query_cmd",
    "export": "agent.cli.export_cmd",
    "demo": "agent.cli.demo_cmd",
    "suggest": "agent.cli.suggest_cmd",
    "steer": "agent.cli.steer_cmd",
    "check": "agent.cli.check_cmd",
    "serve": "agent.cli.serve_cmd",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(module_name)
        for command in module.COMMANDS:
            if command.name == cmd_name:
                return command
        raise RuntimeError(f"{module_name} does not define the command {cmd_name!r}")

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMAND_MODULES and not ctx.resilient_parsing:
            close = difflib.get_close_matches(name, list(COMMAND_MODULES), n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise click.UsageError(f"No such command {name!r}.{hint}", ctx)
        return super().resolve_command(ctx, args)


def usage_line(exc: click.UsageError) -> str:
    """A click usage error as one line: the message, then where the help is."""
    message = " ".join(exc.format_message().split())
    where = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "plmlabel --help"
    return f"{message} (see `{where}`)"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plmlabel")
def cli() -> None:
    """plmlabel: name the features of protein-language-model sparse autoencoders with an LLM."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="plmlabel", standalone_mode=False)
    except PlmlabelError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("[red]aborted[/red]", markup=True)
        sys.exit(130)
    except click.UsageError as exc:
        err_console.print(f"[red]error:[/red] {escape(usage_line(exc))}", soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err_console.print(f"[red]error:[/red] {escape(' '.join(exc.format_message().split()))}",
                          soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
    except sqlite3.DatabaseError as exc:  # one not raised inside `with workspace.db()`: still one line
        err_console.print(f"[red]error:[/red] {escape(' '.join(f'database error: {exc}'.split()))}",
                          soft_wrap=True, markup=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]", markup=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        message = escape(f"{exc.strerror or exc}{where}")
        err_console.print(f"[red]error:[/red] {message}", soft_wrap=True, markup=True)
        sys.exit(1)
    else:
        sys.exit(0)
