"""A damaged plmlabel.db: every command refuses in one line and writes nothing; `plmlabel check` explains."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from storage.db import Database
from storage.errors import DamagedDatabaseError
from storage.workspace import Workspace
from tests.index_fixtures import SAE_ID, copy_template


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2 + 100]  # not a whole number of pages


def _truncate_pages(data: bytes) -> bytes:
    return data[: (len(data) // 4096 // 2) * 4096]  # whole pages, fewer than the header says


def _corrupt(data: bytes) -> bytes:
    out = bytearray(data)
    for i in range(len(out) // 3, len(out) // 3 + 3 * 4096, 7):
        out[i] = (out[i] * 31 + 7) % 256
    return bytes(out)


def _scramble_header(data: bytes) -> bytes:
    return bytes((b * 13 + 5) % 256 for b in data[:100]) + data[100:]


def _scramble_header_fields(data: bytes) -> bytes:  # the magic string kept, the fields after it not
    return data[:16] + bytes((b * 13 + 5) % 256 for b in data[16:100]) + data[100:]


def _empty(data: bytes) -> bytes:
    return b""


DAMAGE = {"truncated": _truncate, "truncated-pages": _truncate_pages, "corrupted": _corrupt,
          "scrambled-header": _scramble_header, "scrambled-header-fields": _scramble_header_fields,
          "empty": _empty}

COMMANDS = {
    "query": ["query", "kinase"],
    "show": ["show", SAE_ID, "0"],
    "label": ["label", SAE_ID, "--top", "2", "--backend", "baseline"],
    "index": ["index", SAE_ID],
    "feature show": ["feature", "show", SAE_ID, "0"],
    "concepts": ["concepts", SAE_ID],
    "swissprot import": ["swissprot", "import", "{data}/sprot_sample.tsv"],
    "swissprot stats": ["swissprot", "stats"],
    "swissprot show": ["swissprot", "show", "P12345"],
    "sae list": ["sae", "list"],
    "sae eval": ["sae", "eval", SAE_ID],
    "export": ["export", SAE_ID, "--format", "jsonl", "--out", "{tmp}/out"],
    "embed": ["embed", "--model", "{tmp}/absent.pt", "--layer", "1"],
    "label --batch": ["label", SAE_ID, "--all", "--batch", "--backend", "anthropic"],
    "init": ["init"],
}


@pytest.fixture(scope="module")
def template(tmp_path_factory, swissprot_dir_module) -> Path:
    return copy_template(swissprot_dir_module, tmp_path_factory.mktemp("damaged") / "ws").root


@pytest.fixture(scope="module")
def swissprot_dir_module():
    from tests.index_fixtures import shared_swissprot

    return shared_swissprot()


def _digest(folder: Path) -> dict[str, str]:
    """Every file's hash; the empty lock files of `label` (kept between runs by design) left out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


# `init` on an empty file gives it a schema (the one command allowed to): tested on its own below.
CASES = [(c, d) for c in COMMANDS for d in DAMAGE if (c, d) != ("init", "empty")]


@pytest.mark.parametrize(("command", "damage"), CASES)
def test_every_command_refuses_a_damaged_database_in_one_line(damage, command, template, tmp_path, cli,
                                                              swissprot_dir_module, monkeypatch):
    # a key is set so that `label --batch` gets as far as the database (no request is ever sent)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-never-sent")
    ws = tmp_path / "ws"
    import shutil

    shutil.copytree(template, ws)
    db = ws / "plmlabel.db"
    db.write_bytes(DAMAGE[damage](db.read_bytes()))
    before = _digest(ws)
    args = [a.format(data=swissprot_dir_module, tmp=tmp_path) for a in COMMANDS[command]]
    result = cli(*args, "--workspace", ws)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert str(db) in lines[0] and "damaged" in lines[0], lines[0]
    assert _digest(ws) == before  # the database and every other file unchanged, nothing new
    assert not (tmp_path / "out").exists()


def test_an_empty_file_is_not_given_a_schema_but_init_gives_one(tmp_path, cli):
    ws = Workspace(tmp_path / "ws")
    ws.init()
    ws.db_path.write_bytes(b"")
    with pytest.raises(DamagedDatabaseError, match="empty"):
        ws.db()
    assert ws.db_path.read_bytes() == b""
    assert cli("init", "--workspace", ws.root).exit_code == 0
    with ws.db() as db:
        assert db.schema_version > 0


def test_a_missing_database_is_not_created_behind_the_users_back(tmp_path, cli):
    ws = Workspace(tmp_path / "ws")
    ws.init()
    ws.db_path.unlink()
    result = cli("swissprot", "stats", "--workspace", ws.root)
    assert result.exit_code == 2 and "is missing" in result.stderr and "plmlabel init" in result.stderr
    assert not ws.db_path.exists()


def test_damage_met_later_in_a_large_file_is_still_one_line(template, tmp_path, cli, monkeypatch):
    """Above the quick_check size only the header is checked; damage in a page read is still one line."""
    import shutil

    import storage.db

    monkeypatch.setattr(storage.db, "QUICK_CHECK_MAX_BYTES", 0)
    shutil.copytree(template, tmp_path / "ws")
    db = tmp_path / "ws" / "plmlabel.db"
    data = bytearray(db.read_bytes())
    conn = sqlite3.connect(db)
    roots = conn.execute("select rootpage from sqlite_master where tbl_name in ('proteins', 'features') "
                         "and rootpage > 0").fetchall()
    conn.close()
    for (root,) in roots:  # the root pages of both tables and their indexes zeroed
        data[(root - 1) * 4096:root * 4096] = bytes(4096)
    db.write_bytes(bytes(data))
    result = cli("swissprot", "stats", "--workspace", tmp_path / "ws")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "damaged" in result.stderr


# --- plmlabel check -----------------------------------------------------------------------------------


@pytest.fixture
def checked(template, tmp_path) -> Workspace:
    import shutil

    shutil.copytree(template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_check_a_sound_workspace(checked, cli):
    result = cli("check", "--workspace", checked.root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"{checked.root}: no problems found."
    assert cli("check", "--workspace", checked.root, "--json").json() == {"ok": True, "problems": []}


@pytest.mark.parametrize("damage", DAMAGE)
def test_check_reports_a_damaged_file_and_changes_nothing(damage, checked, cli):
    checked.db_path.write_bytes(DAMAGE[damage](checked.db_path.read_bytes()))
    before = _digest(checked.root)
    result = cli("check", "--workspace", checked.root, "--json")
    assert result.exit_code == 1
    problems = result.json()["problems"]
    assert problems and all(p["fix"] for p in problems)
    assert problems[0]["where"] == str(checked.db_path)
    assert _digest(checked.root) == before
    human = cli("check", "--workspace", checked.root)
    assert human.exit_code == 1 and "fix: restore plmlabel.db from a backup" in human.stderr


def _orphans(path: Path) -> None:
    conn = sqlite3.connect(path)  # foreign keys off: this is how a bad copy or a hand edit leaves rows
    conn.execute("insert into sae_features (sae_id, feature, max_activation) values ('ghost', 0, 1.0)")
    conn.execute("insert into features (accession, type, start, end) values ('NOPE00', 'Domain', 1, 2)")
    conn.commit()
    conn.close()


def test_check_reports_orphan_rows_one_line_each_with_the_fix(checked, cli):
    _orphans(checked.db_path)
    result = cli("check", "--workspace", checked.root)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert any("table sae_features: 1 orphan rows: sae_id names no row of saes; fix:" in line
               for line in lines)
    assert any("table features: 1 orphan rows: accession names no row of proteins; fix: re-import" in line
               for line in lines)


def test_check_compares_weights_and_index_with_the_database(checked, cli):
    from sae.model import WEIGHTS_FILENAME

    weights = checked.sae_dir(SAE_ID) / WEIGHTS_FILENAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    array = checked.index_path(SAE_ID) / "feature_max.npy"
    values = bytearray(array.read_bytes())
    values[-1] ^= 0xFF
    array.write_bytes(bytes(values))
    problems = [p["problem"] for p in cli("check", "--workspace", checked.root, "--json").json()["problems"]]
    assert "its weights file differs from the one recorded (sha256 mismatch)" in problems
    assert "its index was built from other weights" in problems
    assert any("index hash mismatch" in p for p in problems)
    os.remove(weights)
    problems = cli("check", "--workspace", checked.root, "--json").json()["problems"]
    assert [p["problem"] for p in problems] == [f"its weights file {weights} is missing"]


def test_database_open_refuses_before_connecting(tmp_path):
    path = tmp_path / "x.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(84))
    with pytest.raises(DamagedDatabaseError, match="impossible page size"):
        Database.open(path)
    assert not (tmp_path / "x.db-wal").exists()


def test_a_database_with_a_pending_wal_is_not_taken_for_damaged(tmp_path):
    """What kill -9 leaves (committed rows only in the -wal file) opens, and the rows are there."""
    import shutil

    ws = Workspace(tmp_path / "ws")
    ws.init()
    writer = sqlite3.connect(ws.db_path)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.executemany("insert into runs (run_id, status) values (?, 'completed')",
                       [(f"r{i}",) for i in range(2000)])
    writer.commit()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("plmlabel.db", "plmlabel.db-wal", "plmlabel.toml"):
        shutil.copy(ws.root / name, copy / name)  # as a crash leaves it: the writer never closed
    writer.close()
    assert (copy / "plmlabel.db-wal").stat().st_size > 0
    with Workspace(copy).db() as db:
        assert db.table("runs").count == 2000
