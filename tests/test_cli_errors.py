"""Usage errors, unknown commands and non-finite numbers: one line each, exit 2, nothing stored."""

from __future__ import annotations

import pytest

from storage.errors import ConfigError
from storage.workspace import Workspace


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize("args", [
    ["label", "x", "--budget-usd"],
    ["label", "x", "--batch", "--wait", "--poll-interval"],
    ["query", "zinc", "--min-score"],
    ["sae", "train", "--name", "s", "--lr"],
    ["sae", "train", "--name", "s", "--arch", "relu", "--l1"],
])
def test_non_finite_flag_values_are_refused_at_parse_time(args, value, workspace, cli):
    result = cli(*args, value, "--workspace", workspace.root)
    assert result.exit_code == 2
    (line,) = _lines(result.stderr)
    assert line.startswith(f"error: Invalid value for '{args[-1]}': {value!r} is not a finite number. (see ")


@pytest.mark.parametrize(("key", "value"), [
    ("budget_usd", "nan"), ("budget_usd", "inf"), ("threshold", "nan"), ("timeout_s", "inf"),
    ("retry_wait_s", "nan"),
])
def test_non_finite_config_values_are_one_clear_error(key, value, tmp_path, cli):
    ws = Workspace(tmp_path / "ws")
    ws.init()
    ws.config_path.write_text(_set(ws.config_path.read_text(), key, value))
    with pytest.raises(ConfigError, match=f"label.{key}: Input should be a finite number"):
        ws.load_config()
    result = cli("label", "anything", "--workspace", ws.root)
    assert result.exit_code == 2
    expected = f"error: {ws.config_path}: label.{key}: Input should be a finite number."
    assert _lines(result.stderr) == [expected]


def _set(text: str, key: str, value: str) -> str:
    """The toml text with `key` of [label] set to the bare TOML float `value` (nan and inf are TOML)."""
    lines = [line for line in text.splitlines() if not line.lstrip("# ").startswith(f"{key} =")]
    at = lines.index("[label]") + 1
    return "\n".join([*lines[:at], f"{key} = {value}", *lines[at:]]) + "\n"


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("lable", "label"), ("qurey", "query"), ("exprot", "export"), ("chek", "check"),
])
def test_unknown_top_level_command_suggests_the_close_one(typo, suggestion, cli):
    result = cli(typo)
    assert result.exit_code == 2
    assert _lines(result.stderr) == [f"error: No such command {typo!r}. Did you mean {suggestion!r}? "
                                     "(see `plmlabel --help`)"]


def test_unknown_command_without_a_close_one_says_so(cli):
    result = cli("zzzzzz")
    assert _lines(result.stderr) == ["error: No such command 'zzzzzz'. (see `plmlabel --help`)"]


@pytest.mark.parametrize(("args", "message"), [
    (["show", "x"], "error: Missing argument 'FEATURE'. (see `plmlabel show --help`)"),
    (["sae", "evl"], "error: No such command 'evl'. Did you mean 'eval'? (see `plmlabel sae --help`)"),
    (["--bogus"], "error: No such option '--bogus'. (see `plmlabel --help`)"),
    (["query", "--min-score", "x"],
     "error: Invalid value for '--min-score': 'x' is not a valid float. (see `plmlabel query --help`)"),
    (["export", "s", "--format", "pdf", "--out", "o"], None),
])
def test_click_usage_errors_are_one_line(args, message, cli):
    result = cli(*args)
    assert result.exit_code == 2
    lines = _lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and lines[0].endswith("--help`)")
    if message:
        assert lines[0] == message
