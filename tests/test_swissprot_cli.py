"""`plmlabel swissprot import / stats / show` through the real CLI, good input and bad."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.swissprot import parse_file

COUNTS = {
    "sprot_sample.dat.gz": 1033,
    "sprot_legacy.dat.gz": 191,
    "sprot_sample.xml.gz": 250,
    "sprot_sample.json": 8,  # the issue says 52; the shared file holds 8 entries
    "sprot_sample.tsv": 6,
}


DIGIT = "the sequence has '1' at residue 3; only letters are allowed"


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _snapshot(workspace) -> list[tuple]:
    with workspace.db() as db:
        proteins = db.execute("select accession, content_hash, updated_at from proteins order by 1")
        proteins = proteins.fetchall()
        features = db.execute("select count(*) from features").fetchone()[0]
    return [*proteins, ("features", features)]


@pytest.mark.parametrize(("name", "count"), COUNTS.items())
def test_import_each_shared_file_then_reimport(name, count, swissprot_dir, workspace, cli):
    first = cli("swissprot", "import", swissprot_dir / name, "--workspace", workspace.root, "--json")
    assert first.exit_code == 0, first.stderr
    assert first.json() == {"imported": count, "updated": 0, "unchanged": 0, "total": count, "skipped": 0}
    again = cli("swissprot", "import", swissprot_dir / name, "--workspace", workspace.root, "--json")
    assert again.json() == {"imported": 0, "updated": 0, "unchanged": count, "total": count, "skipped": 0}
    stats = cli("swissprot", "stats", "--workspace", workspace.root, "--json").json()
    assert stats["proteins"] == count
    assert stats["features"] == sum(stats["by_type"].values())


def test_import_several_files_at_once_and_show(swissprot_dir, workspace, cli):
    files = [swissprot_dir / n for n in ("sprot_legacy.dat.gz", "sprot_sample.xml.gz", "sprot_sample.json",
                                         "sprot_sample.tsv")]
    result = cli("swissprot", "import", *files, "--workspace", workspace.root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "455 proteins read: 455 imported, 0 updated, 0 unchanged."

    shown = cli("swissprot", "show", "A0A087X1C5", "--workspace", workspace.root, "--json")
    expected = next(p for p in parse_file(swissprot_dir / "sprot_sample.tsv") if p.accession == "A0A087X1C5")
    assert shown.json() == json.loads(expected.model_dump_json())

    panel = cli("swissprot", "show", "p31946", "--workspace", workspace.root, env={"COLUMNS": "200"})
    assert panel.exit_code == 0
    for text in ("P31946 · 1433B_HUMAN", "14-3-3 protein beta/alpha", "Homo sapiens (Human) (taxon 9606)",
                 "Alternative sequence", "Missing (in isoform Short)", "27 features"):
        assert text in panel.stdout, text

    stats = cli("swissprot", "stats", "--workspace", workspace.root)
    assert "455 proteins" in stats.stdout and "Disulfide bond" in stats.stdout


def test_show_unknown_accession(workspace, cli):
    result = cli("swissprot", "show", "Q00000", "--workspace", workspace.root)
    assert result.exit_code == 2
    assert _stderr_lines(result) == [
        "error: no protein Q00000 in the workspace; import it with `plmlabel swissprot import` or `fetch`."]


@pytest.mark.parametrize("command", ["import", "fetch", "stats", "show"])
def test_every_command_has_help(command, cli):
    result = cli("swissprot", command, "--help")
    assert result.exit_code == 0 and "--workspace" in result.stdout


# --- bad input --------------------------------------------------------------------------------------------


def _records(swissprot_dir: Path) -> list[str]:
    text = gzip.decompress((swissprot_dir / "sprot_legacy.dat.gz").read_bytes()).decode()
    return [record + "//\n" for record in text.split("//\n")[:-1]]


def _with_digit(record: str) -> str:
    head, _, sequence = record.partition("\nSQ   ")
    first_line_end = sequence.index("\n") + 1
    return f"{head}\nSQ   {sequence[:first_line_end]}     MK1LV\n{sequence[first_line_end:]}"


def _non_uniprot(d: Path, sp: Path) -> Path:
    (d / "notes.txt").write_text("Gene list\nTP53\nBRCA1\n")
    return d / "notes.txt"


def _empty(d: Path, sp: Path) -> Path:
    (d / "empty.dat").write_bytes(b"")
    return d / "empty.dat"


def _wrong_gzip(d: Path, sp: Path) -> Path:
    (d / "wrong.dat.gz").write_bytes(b"\x1f\x8b" + b"this is not deflate data" * 10)
    return d / "wrong.dat.gz"


def _cut_gzip(d: Path, sp: Path) -> Path:
    (d / "cut.dat.gz").write_bytes((sp / "sprot_legacy.dat.gz").read_bytes()[:300_000])
    return d / "cut.dat.gz"


def _truncated_record(d: Path, sp: Path) -> Path:
    record = _records(sp)[0]
    (d / "one.dat").write_text(record[: record.index("\nSQ   ")] + "\n")
    return d / "one.dat"


def _digits(d: Path, sp: Path) -> Path:
    (d / "digits.dat").write_text(_with_digit(_records(sp)[1]))
    return d / "digits.dat"


def _other_xml(d: Path, sp: Path) -> Path:
    (d / "page.xml").write_text('<?xml version="1.0"?>\n<html><body>hello</body></html>\n')
    return d / "page.xml"


def _cut_xml(d: Path, sp: Path) -> Path:
    (d / "cut.xml").write_bytes(gzip.decompress((sp / "sprot_sample.xml.gz").read_bytes())[:50_000])
    return d / "cut.xml"


def _cut_json(d: Path, sp: Path) -> Path:
    (d / "cut.json").write_text((sp / "sprot_sample.json").read_text()[:40_000])
    return d / "cut.json"


def _tsv_without_sequence(d: Path, sp: Path) -> Path:
    rows = [line.split("\t")[:7] for line in (sp / "sprot_sample.tsv").read_text().splitlines()]
    (d / "nosequence.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return d / "nosequence.tsv"


BAD: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "non-UniProt file": (_non_uniprot, r"notes\.txt, line 1: not a UniProt file"),
    "empty file": (_empty, r"empty\.dat: the file is empty"),
    "wrong gzip": (_wrong_gzip, r"wrong\.dat\.gz: the gzip data is truncated or corrupt"),
    "cut gzip": (_cut_gzip, r"cut\.dat\.gz, line \d+: the gzip data is truncated or corrupt"),
    "truncated record": (_truncated_record, r"one\.dat, record P31946, line 1: no record could be read: "
                                            r"the file ends inside this record"),
    "digits in sequence": (_digits, r"digits\.dat, record P62258, line 1: no record could be read: "
                                    r"the sequence has '1' at residue 3"),
    "non-UniProt XML": (_other_xml, r"page\.xml: not UniProt XML \(the document starts with <html>"),
    "XML cut short": (_cut_xml, r"cut\.xml, line \d+: the XML is not well-formed or is cut short"),
    "JSON cut short": (_cut_json, r"cut\.json: not valid JSON"),
    "TSV without sequences": (_tsv_without_sequence, r"nosequence\.tsv, line 1: the TSV has no 'Sequence'"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, swissprot_dir, workspace, cli, tmp_path):
    make, message = BAD[case]
    cli("swissprot", "import", swissprot_dir / "sprot_sample.tsv", "--workspace", workspace.root)
    before = _snapshot(workspace)
    bad = make(tmp_path, swissprot_dir)
    # with a good file before it in the same invocation: that one must not be imported either
    good = swissprot_dir / "sprot_sample.json"
    result = cli("swissprot", "import", good, bad, "--workspace", workspace.root)
    assert result.exit_code == 2
    lines = _stderr_lines(result)
    assert len(lines) == 1, lines
    assert re.match(r"error: \S*" + message, lines[0]), lines[0]
    assert str(bad) in lines[0]
    assert _snapshot(workspace) == before


def test_one_bad_record_among_good_ones(swissprot_dir, workspace, cli, tmp_path):
    records = _records(swissprot_dir)
    mixed = tmp_path / "mixed.dat"
    mixed.write_text(records[0] + _with_digit(records[1]) + records[2])
    strict = cli("swissprot", "import", mixed, "--strict", "--workspace", workspace.root, "--json")
    assert strict.exit_code == 2
    assert _stderr_lines(strict) == [
        f"error: {mixed}, record P62258, line 513: {DIGIT}"]
    assert _snapshot(workspace) == [("features", 0)]

    result = cli("swissprot", "import", mixed, "--workspace", workspace.root, "--json")
    assert result.exit_code == 1  # exit 0 only when every record was imported
    assert result.json() == {"imported": 2, "updated": 0, "unchanged": 0, "total": 2, "skipped": 1}
    assert _stderr_lines(result) == [
        f"error: partial import: 1 of 3 records skipped "
        f"(the first: {mixed}, record P62258, line 513: {DIGIT}); the others were stored. "
        "--verbose lists every skipped record, --strict imports nothing when any record is bad."]
    assert [row[0] for row in _snapshot(workspace)[:-1]] == ["P31946", "Q04917"]

    verbose = cli("swissprot", "import", mixed, "--workspace", workspace.root, "--verbose")
    assert verbose.exit_code == 1
    assert _stderr_lines(verbose)[0] == f"skipped: {mixed}, record P62258, line 513: {DIGIT}"
    assert _stderr_lines(verbose)[1].startswith("error: partial import: 1 of 3 records skipped")


def test_a_truncated_flat_file_imports_the_good_records_and_exits_1(swissprot_dir, workspace, cli, tmp_path):
    cut = tmp_path / "cut.dat"
    cut.write_text("".join(_records(swissprot_dir)[:3])[:-200])  # the third record loses its end
    result = cli("swissprot", "import", cut, "--workspace", workspace.root)
    assert result.exit_code == 1
    assert result.stdout.strip() == ("2 proteins read: 2 imported, 0 updated, 0 unchanged; "
                                     "1 bad records skipped.")
    (line,) = _stderr_lines(result)
    assert line.startswith(f"error: partial import: 1 of 3 records skipped (the first: {cut}, record ")
    assert "the file ends inside this record" in line


def test_strict_prints_its_one_error_line_and_no_warnings(swissprot_dir, workspace, cli, tmp_path):
    sample = swissprot_dir / "sprot_sample.dat.gz"
    with gzip.open(sample, "rt") as handle:
        text = handle.read()
    cut = tmp_path / "cut.dat"
    cut.write_text(text[: len(text) // 2])  # many isoform warnings before the truncated last record
    result = cli("swissprot", "import", cut, "--strict", "--workspace", workspace.root)
    assert result.exit_code == 2
    (line,) = _stderr_lines(result)
    assert line.startswith(f"error: {cut}, record ") and "the file ends inside this record" in line
    assert _snapshot(workspace) == [("features", 0)]


def test_isoform_warnings_of_a_real_file_are_counted_and_verbose_lists_them(swissprot_dir, workspace, cli):
    sample = swissprot_dir / "sprot_sample.dat.gz"
    result = cli("swissprot", "import", sample, "--workspace", workspace.root)
    assert result.exit_code == 0
    assert _stderr_lines(result) == [
        "note: 93 features on other isoforms dropped (only canonical sequences are stored; normal for "
        "UniProt files, --verbose lists them)."]
    verbose = cli("swissprot", "import", sample, "--workspace", workspace.root, "--verbose")
    lines = _stderr_lines(verbose)
    assert verbose.exit_code == 0 and len(lines) == 93
    assert all(line.startswith(f"warning: {sample}, record ") and line.endswith("lies on another sequence; "
                                                                              "dropped") for line in lines)


def test_a_feature_off_the_sequence_is_dropped_with_a_warning(swissprot_dir, workspace, cli, tmp_path):
    record = _records(swissprot_dir)[0]  # 1433B_HUMAN, 246 residues
    assert "FT   DOMAIN        3    106" not in record
    edited = record.replace("FT   CHAIN         1    246       14-3-3 protein beta/alpha.",
                            "FT   CHAIN         1    400       14-3-3 protein beta/alpha.")
    assert edited != record
    path = tmp_path / "off.dat"
    path.write_text(edited)
    result = cli("swissprot", "import", path, "--workspace", workspace.root, "--json")
    assert result.exit_code == 0 and result.json()["imported"] == 1
    assert _stderr_lines(result) == [
        f"warning: {path}, record P31946, line 1: Chain at 1..400 lies outside the 246-residue sequence; "
        "dropped"]
    shown = cli("swissprot", "show", "P31946", "--workspace", workspace.root, "--json").json()
    assert not [f for f in shown["features"] if f["type"] == "Chain" and f["end"] == 400]


@pytest.mark.parametrize("which", ["workspace", "folder only", "database only"])
def test_import_into_a_read_only_workspace_is_one_line_and_changes_nothing(which, swissprot_dir, workspace,
                                                                           cli):
    from tests.readonly import read_only

    cli("swissprot", "import", swissprot_dir / "sprot_sample.tsv", "--workspace", workspace.root)
    files = sorted(workspace.root.iterdir())
    before = {p.name: p.read_bytes() for p in files if p.is_file()}
    targets = {"workspace": [workspace.root, workspace.db_path, workspace.config_path],
               "folder only": [workspace.root], "database only": [workspace.db_path]}[which]
    with read_only(*targets):
        result = cli("swissprot", "import", swissprot_dir / "sprot_sample.json",
                     "--workspace", workspace.root)
    reason = ("attempt to write a readonly database" if which == "database only"
              else "unable to open database file")
    assert result.exit_code == 2
    assert _stderr_lines(result) == [
        f"error: cannot write to {workspace.db_path}: the workspace is read-only ({reason}); "
        "nothing was changed."]
    assert {p.name: p.read_bytes() for p in files if p.is_file()} == before
    assert cli("swissprot", "stats", "--workspace", workspace.root, "--json").json()["proteins"] == 6
