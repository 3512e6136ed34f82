"""Stored text is data on the terminal: no rich markup, no control sequences, marks without colour.

Every command that renders stored text (`feature show`, `show`, `query`, `swissprot show`, `sae list`)
runs on a workspace whose protein names, function text, feature descriptions and labels hold rich
markup, an OSC title sequence, ANSI colours, CR and a bidi override.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from agent.cli.index_render import MARK_LEGEND, mark_for
from agent.cli.safe_text import SafeConsole, clean, data_text
from storage.workspace import Workspace
from tests.index_fixtures import SAE_ID, TM_FEATURE, copy_template, shared_swissprot

OSC_TITLE = "\x1b]0;pwned\x07"
ANSI_RED = "\x1b[31m"
HOSTILE = f"[/x] [bold]Bold[/bold] {OSC_TITLE}{ANSI_RED}red\rover \u202eevil\x9b2J"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


def _assert_inert(output: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in output, repr(char)
    assert "[/x]" in output and "[bold]Bold[/bold]" in output  # shown as written, not applied
    assert "\\x1b]0;pwned\\x07" in output and "\\x1b[31mred\\x0dover" in output and "\\u202eevil" in output


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Workspace, str]:
    """The planted indexed workspace, with hostile text on every protein and a hostile label."""
    from sae.index import load_feature_examples

    ws = copy_template(shared_swissprot(), tmp_path_factory.mktemp("hostile") / "ws")
    with ws.db() as db:
        examples = load_feature_examples(ws, db, SAE_ID, TM_FEATURE)
        top = examples.examples[0].protein.accession
        with db.transaction():
            db.execute("update proteins set protein_name = ? || accession, organism = ?, function = ?",
                       (HOSTILE, HOSTILE, HOSTILE))
            db.execute("update features set description = ?", (HOSTILE,))
            db.execute("update saes set plm_model = ?", (HOSTILE,))
            db.table("runs").insert({"run_id": "r1", "sae_id": SAE_ID, "kind": "label",
                                     "status": "completed"})
            db.table("labels").insert({
                "sae_id": SAE_ID, "feature": TM_FEATURE, "status": "ok", "label": HOSTILE,
                "description": HOSTILE, "concepts": json.dumps([HOSTILE]), "pearson": 0.7, "spearman": 0.6,
                "n_heldout": 10, "validated": 1, "backend": "baseline", "explainer_model": HOSTILE,
                "run_id": "r1", "created_at": "2025-01-01T00:00:00+00:00",
            })
    return ws, top


def test_clean_shows_controls_and_keeps_text() -> None:
    assert clean(OSC_TITLE) == "\\x1b]0;pwned\\x07"
    assert clean("a\tb\nc\r\x00\x7f\u2066") == "a\tb\nc\\x0d\\x00\\x7f\\u2066"
    assert clean("[bold]Zn²⁺ binding – β-sheet[/bold]") == "[bold]Zn²⁺ binding – β-sheet[/bold]"
    assert clean(None) == ""
    assert data_text("[/x]").plain == "[/x]"


def test_safe_console_cleans_direct_text_and_markup_free_strings() -> None:
    from rich.text import Text

    console = SafeConsole(record=True, markup=False, highlight=False, width=120, force_terminal=True)
    console.print(Text(f"direct {OSC_TITLE}", style="bold"))  # a Text built without the helper
    console.print(f"plain {ANSI_RED}str")
    out = console.export_text(styles=True)
    # rich's Text drops BEL itself; the ESC it keeps is made visible by the console's last net
    assert "\x07" not in out and "direct \\x1b]0;pwned" in out and "plain \\x1b[31mstr" in out
    assert "\x1b[1m" in out  # rich's own styling still reaches the terminal


@pytest.mark.parametrize("args", [
    ("feature", "show", SAE_ID, str(TM_FEATURE), "--top", "2"),
    ("show", SAE_ID, str(TM_FEATURE)),
    ("query",),
    ("query", "Bold", "--include-failed"),
    ("sae", "list"),
    ("label", SAE_ID, "--features", str(TM_FEATURE), "--relabel", "--dry-run", "--backend", "anthropic"),
])
def test_rendering_commands_keep_hostile_text_inert(cli, hostile, args) -> None:
    ws, _top = hostile
    result = cli(*args, "--workspace", ws.root, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for char in RAW_CONTROLS:
        assert char not in result.stdout + result.stderr, (args, repr(char))
    if args[0] == "label":  # the prompt builder already turned the CR into a space
        assert "[/x] [bold]Bold[/bold] \\x1b]0;pwned\\x07\\x1b[31mred over \\u202eevil" in result.stdout
    elif args[0] != "sae":
        _assert_inert(result.stdout)


def test_swissprot_show_keeps_hostile_text_inert(cli, hostile) -> None:
    ws, top = hostile
    result = cli("swissprot", "show", top, "--workspace", ws.root, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.stderr
    _assert_inert(result.stdout)


def test_json_keeps_the_exact_text(cli, hostile) -> None:
    ws, top = hostile
    shown = cli("show", SAE_ID, str(TM_FEATURE), "--workspace", ws.root, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\\u001b]0;pwned\\u0007" in shown.stdout  # JSON-escaped
    data = shown.json()
    assert data["description"] == HOSTILE and data["label"] == HOSTILE
    assert any(e["name"] == HOSTILE + e["accession"] for e in data["examples"])
    listed = cli("query", "--workspace", ws.root, "--json").json()
    assert listed[0]["description"] == HOSTILE
    feature = cli("feature", "show", SAE_ID, str(TM_FEATURE), "--workspace", ws.root, "--json").json()
    assert feature["examples"][0]["protein_name"] == HOSTILE + feature["examples"][0]["accession"]


def test_feature_show_marks_firing_residues_without_colour(cli, hostile) -> None:
    """Piped (no terminal, no colour), a marks line sits under each sequence line that fires."""
    ws, _top = hostile
    result = cli("feature", "show", SAE_ID, str(TM_FEATURE), "--top", "1", "--workspace", ws.root,
                 "--json")
    example = result.json()["examples"][0]
    firing = {position: value for position, value in example["firing"]}
    feature_max = result.json()["max_activation"]
    text = cli("feature", "show", SAE_ID, str(TM_FEATURE), "--top", "1", "--workspace", ws.root,
               env={"COLUMNS": "120"}).stdout
    assert MARK_LEGEND in text
    lines = text.splitlines()
    # pair each numbered sequence line with the marks line under it and check every column
    checked = 0
    for i, line in enumerate(lines[:-1]):
        body = line.strip("│ ")
        head = body.split(" ", 1)
        if len(head) != 2 or not head[0].isdigit() or not head[1].isalpha():
            continue
        start, residues = int(head[0]), head[1]
        offset = line.index(residues)
        marks = lines[i + 1][offset:offset + len(residues)].ljust(len(residues))
        if not set(marks) <= set("#+:. "):
            marks = " " * len(residues)  # the next line is not a marks line: nothing fires here
        for column, _residue in enumerate(residues):
            value = firing.get(start + column)
            expected = " " if value is None else mark_for(value / feature_max)
            assert marks[column] == expected, (start + column, marks)
            checked += value is not None
    assert checked == len(firing) > 0


def test_feature_show_on_a_colour_terminal_uses_styles_not_marks(hostile) -> None:
    from agent.cli.index_render import render_feature
    from sae.index import load_feature_examples

    ws, _top = hostile
    with ws.db() as db:
        examples = load_feature_examples(ws, db, SAE_ID, TM_FEATURE)
    console = SafeConsole(record=True, markup=False, width=160, force_terminal=True, color_system="truecolor")
    for renderable in render_feature(examples, 1):
        console.print(renderable)
    assert MARK_LEGEND not in console.export_text()
    plain = Console(record=True, width=160, color_system=None)
    for renderable in render_feature(examples, 1):
        plain.print(renderable)
    assert MARK_LEGEND in plain.export_text()


def test_show_brackets_firing_residues_without_colour(cli, hostile) -> None:
    import re

    ws, _top = hostile
    data = cli("show", SAE_ID, str(TM_FEATURE), "--workspace", ws.root, "--json").json()
    firing = {e["accession"]: {p for p, _ in e["firing"]} for e in data["examples"]}
    text = cli("show", SAE_ID, str(TM_FEATURE), "--workspace", ws.root, env={"COLUMNS": "250"}).stdout
    assert "firing in red, or [X]" in text
    windows = re.findall(r"^\W*(\w+) .*? (\d+)-(\d+) ((?:[A-Z]|\[[A-Z]\])+)", text, flags=re.M)
    assert windows
    for accession, start, end, residues in windows:
        marked = [token.startswith("[") for token in re.findall(r"\[[A-Z]\]|[A-Z]", residues)]
        assert len(marked) == int(end) - int(start) + 1
        shown = {int(start) + i for i, is_marked in enumerate(marked) if is_marked}
        assert shown == {p for p in firing[accession] if int(start) <= p <= int(end)} and shown


def test_query_csv_is_exact_in_a_pipe_and_escaped_on_a_terminal(cli, hostile, monkeypatch) -> None:
    import csv
    import io

    ws, _top = hostile
    piped = cli("query", "--workspace", ws.root, "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(piped, newline="")))
    assert rows[0]["description"] == HOSTILE  # data output keeps the exact text (no formula start here)
    monkeypatch.setattr("agent.cli.query_cmd._stdout_is_terminal", lambda: True)
    shown = cli("query", "--workspace", ws.root, "--csv").stdout
    for char in RAW_CONTROLS:
        assert char not in shown
    assert "\\x1b]0;pwned\\x07" in shown


def test_an_error_line_naming_stored_text_keeps_it_inert(cli, hostile) -> None:
    """The error console (markup on for its own `error:` prefix) shows data escaped and controls visible."""
    ws, _top = hostile
    result = cli("concepts", SAE_ID, "--workspace", ws.root, env={"COLUMNS": "250"})
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no checkpoint at [/x] [bold]Bold[/bold] ")
    for char in RAW_CONTROLS:
        assert char not in result.stderr
    assert "\\x1b]0;pwned\\x07\\x1b[31mred\\x0dover \\u202eevil\\x9b2J" in result.stderr
