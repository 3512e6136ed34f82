"""The command surface: every command has help, the lazy loading keeps torch out of light commands."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from agent.cli import COMMAND_MODULES
from agent.cli import cli as group


def _all_commands() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        paths.append((name,))
        if isinstance(command, click.Group):
            paths.extend((name, sub) for sub in command.list_commands(ctx))
    return paths


def test_every_registered_command_exists():
    ctx = click.Context(group)
    for name in COMMAND_MODULES:
        assert group.get_command(ctx, name).name == name


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_has_help(cli, path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage: plmlabel " + " ".join(path) in result.stdout
    assert "-h, --help" in result.stdout


def test_unknown_command_is_a_usage_error(cli):
    result = cli("frobnicate")
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.stderr


def test_light_commands_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        "try:\n"
        f"    main(['query', 'zinc', '--workspace', {str(tmp_path / 'ws')!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_user_text_is_never_read_as_rich_markup(tmp_path, cli):
    """Paths, ids and Swiss-Prot/LLM text go through the consoles verbatim, never as markup."""
    odd = tmp_path / "runs[bold]x"
    result = cli("init", "--workspace", odd)
    assert result.exit_code == 0, result.stderr
    assert "runs[bold]x" in result.stdout
    shown = cli("swissprot", "show", "[/x]", "--workspace", odd)
    assert shown.exit_code == 2
    assert shown.stderr.startswith("error: ") and "[/x]" in shown.stderr
    assert "Traceback" not in shown.stderr
