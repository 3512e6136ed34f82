"""What every command shares: the --workspace option, JSON output, the error console."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.markup import escape

from agent.cli.safe_text import SafeConsole
from storage.workspace import WORKSPACE_ENV, Workspace

F = TypeVar("F", bound=Callable[..., Any])

# Markup is off: data (paths, Swiss-Prot text, LLM labels) printed or put in a table cell is never
# read as rich markup. A styled line opts in with markup=True and escapes what it interpolates.
# Control characters in data (ESC, CR, ...) are shown escaped (agent/cli/safe_text.py).
console = SafeConsole(highlight=False, markup=False)
err_console = SafeConsole(stderr=True, highlight=False, markup=False)


def workspace_option(func: F) -> F:
    """Add `--workspace DIR` (default: $PLMLABEL_WORKSPACE, else the current folder)."""
    return click.option(
        "--workspace",
        "-w",
        "workspace",
        type=click.Path(file_okay=False),
        default=None,
        envvar=WORKSPACE_ENV,
        show_envvar=True,
        help="Workspace folder (default: the current folder).",
    )(func)


class FiniteFloat(click.FloatRange):
    """A float flag that refuses nan and inf (which every range check lets through) at parse time."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(func)


def open_workspace(path: str | None, *, require: bool = True) -> Workspace:
    workspace = Workspace(path)
    return workspace.require() if require else workspace


def print_json(data: Any) -> None:
    """JSON on stdout, nothing else: safe to pipe."""
    click.echo(json.dumps(data, indent=2, default=str))


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True, markup=True)


def progress_enabled() -> bool:
    """Progress bars go to stderr, and only where a person is watching."""
    return sys.stderr.isatty()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends a command like Ctrl-C (KeyboardInterrupt): what was stored stays stored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
