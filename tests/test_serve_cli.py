"""`plmlabel serve` as a command: loopback by default, a warning for any other host, one line for a
folder that is not a workspace or a database it cannot read; and it serves a read-only workspace."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from agent.serve.app import create_app
from tests.readonly import read_only


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def test_serve_listens_on_loopback_by_default(cli, workspace, started):
    result = cli("serve", "-w", workspace.root, "--max-residues", "500")
    assert result.exit_code == 0, result.stderr
    ((app, kwargs),) = started
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8000
    assert app.state.serve.limits.max_residues == 500
    assert "warning" not in result.stderr
    assert f"Serving {workspace.root} at http://127.0.0.1:8000/" in result.stderr


def test_another_host_is_a_warning(cli, workspace, started):
    result = cli("serve", "-w", workspace.root, "--host", "0.0.0.0", "--port", "9000")
    assert result.exit_code == 0, result.stderr
    assert "warning: listening on 0.0.0.0: every machine that can reach it" in result.stderr
    assert started[0][1]["host"] == "0.0.0.0"


def test_not_a_workspace_is_one_line(cli, tmp_path, started):
    result = cli("serve", "-w", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "is not a plmlabel workspace" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not started


def test_a_damaged_database_is_one_line(cli, workspace, started):
    workspace.db_path.write_bytes(b"not a database at all" * 100)
    result = cli("serve", "-w", workspace.root)
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and not started


def test_an_unmigrated_database_is_one_line(cli, workspace, started):
    with workspace.db() as db:
        db.execute("update meta set value = '1' where key = 'schema_version'")
        db.db.conn.commit()
    result = cli("serve", "-w", workspace.root)
    assert result.exit_code == 2 and "has schema version 1" in result.stderr
    assert "run `plmlabel query` once to migrate it" in result.stderr and not started


def test_bad_flags_are_refused(cli, workspace, started):
    result = cli("serve", "-w", workspace.root, "--port", "70000")
    assert result.exit_code == 2 and "70000" in result.stderr and not started


def test_a_read_only_workspace_is_served(workspace):
    from tests.test_query import seed_labels

    with workspace.db() as db:
        seed_labels(db)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with read_only(workspace.root, workspace.db_path), TestClient(create_app(workspace)) as client:
        page = client.get("/sae/demo/", params={"q": "zinc"})
        assert page.status_code == 200 and 'data-feature="3"' in page.text
        assert client.get("/sae/demo/features/3").status_code == 200
