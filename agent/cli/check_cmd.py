"""`plmlabel check`: is the workspace sound? One line per problem, with its fix."""

from __future__ import annotations

import sys

import click

from agent.cli._common import console, err_console, json_option, open_workspace, print_json, workspace_option
from sae.check import check_workspace, problems_json


@click.command()
@workspace_option
@json_option
def check(workspace: str | None, as_json: bool) -> None:
    """Check the database (integrity, foreign keys, orphan rows) and the SAE weights and indexes against it.

    Reads only. Prints one line per problem with its fix; exits 1 when there is any, 0 when none.
    """
    ws = open_workspace(workspace)
    problems = check_workspace(ws)
    if as_json:
        print_json(problems_json(problems))
    elif problems:
        for problem in problems:
            err_console.print(problem.line(), soft_wrap=True)
    else:
        console.print(f"{ws.root}: no problems found.", soft_wrap=True)
    if problems:
        sys.exit(1)


COMMANDS = [check]
