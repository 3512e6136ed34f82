from __future__ import annotations

import pytest

from storage.db import SCHEMA_VERSION, Database
from storage.errors import ConfigError, InputError
from storage.workspace import Config, Workspace, config_to_toml


def test_init_creates_config_and_database(tmp_path, cli):
    result = cli("init", "--workspace", tmp_path / "w", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"workspace": str((tmp_path / "w").resolve()), "created": True}
    assert (tmp_path / "w" / "plmlabel.toml").exists()
    with Database.open(tmp_path / "w" / "plmlabel.db") as db:
        assert db.schema_version == SCHEMA_VERSION
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    again = cli("init", "--workspace", tmp_path / "w", "--json")
    assert again.json()["created"] is False


def test_workspace_from_environment(tmp_path, cli):
    result = cli("init", env={"PLMLABEL_WORKSPACE": str(tmp_path / "envws")})
    assert result.exit_code == 0
    assert (tmp_path / "envws" / "plmlabel.toml").exists()


def test_config_round_trips_through_toml(tmp_path):
    config = Config.model_validate({"plm": {"layer": 6}, "label": {"threshold": 0.6, "backend": "baseline"}})
    ws = Workspace(tmp_path)
    ws.init(config)
    assert ws.load_config() == config
    assert "layer = 6" in config_to_toml(config)


def test_bad_config_is_one_clear_error(tmp_path):
    ws = Workspace(tmp_path)
    ws.init()
    ws.config_path.write_text("[label]\nthreshold = 'high'\n")
    with pytest.raises(ConfigError, match="label.threshold"):
        ws.load_config()
    ws.config_path.write_text("[label\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ws.load_config()


def test_non_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "x.db"
    path.write_text("hello, not a database")
    with pytest.raises(InputError, match="not an SQLite database"):
        Database.open(path)


def test_transaction_rolls_back_on_error():
    db = Database.open(":memory:")
    with pytest.raises(RuntimeError), db.transaction():
        db.table("runs").insert({"run_id": "r1", "status": "running"})
        raise RuntimeError("boom")
    assert db.table("runs").count == 0


def test_command_outside_workspace_is_a_clear_error(tmp_path, cli):
    result = cli("init", "--help")
    assert result.exit_code == 0 and "--workspace" in result.stdout
