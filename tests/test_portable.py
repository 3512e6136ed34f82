"""A workspace is portable: paths it stores about itself are relative, so a copy (the original deleted)
indexes, labels, shows, exports, embeds and evaluates on its own files; exports show no local path."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from sae.plm_keys import plm_model_key, resolve_plm_model, same_plm_model
from storage.db import Database
from storage.paths import model_display_name, resolve_stored, stored_path
from tests.esm_fixtures import TINY, tiny_checkpoint

N_PROTEINS = 60
SAE = "port"


def _ok(result) -> None:
    assert result.exit_code == 0, result.stdout + result.stderr


def test_stored_paths_are_relative_inside_the_workspace(tmp_path) -> None:
    root = tmp_path / "ws"
    (root / "models").mkdir(parents=True)
    assert stored_path(root / "saes" / "x", root) == "saes/x"
    assert stored_path(tmp_path / "elsewhere.pt", root) == str((tmp_path / "elsewhere.pt").resolve())
    assert resolve_stored("saes/x", tmp_path / "copy") == tmp_path / "copy" / "saes" / "x"
    assert resolve_stored("/abs/m.pt", root) == Path("/abs/m.pt")
    assert plm_model_key("esm2_t6_8M_UR50D", root) == "esm2_t6_8M_UR50D"
    assert plm_model_key(str(root / "models" / "m.pt"), root) == "models/m.pt"
    assert resolve_plm_model("models/m.pt", tmp_path / "copy") == str(tmp_path / "copy" / "models" / "m.pt")
    # an absolute key stored before keys were relative names the same checkpoint after a move
    assert same_plm_model("/old/place/ws/models/m.pt", "models/m.pt", root)
    assert same_plm_model(str(root / "models" / "m.pt"), "models/m.pt", root)
    assert not same_plm_model("/old/place/ws/models/other.pt", "models/m.pt", root)
    assert not same_plm_model(None, "models/m.pt", root)
    assert model_display_name("/home/me/ckpt/esm2_random.pt") == "esm2_random.pt"
    assert model_display_name("models/m.pt") == "m.pt"
    assert model_display_name("esm2_t6_8M_UR50D") == "esm2_t6_8M_UR50D"
    assert model_display_name(None) is None


def test_migration_makes_old_absolute_rows_relative(tmp_path) -> None:
    """A database from before this migration, with absolute paths as plmlabel wrote them, is migrated."""
    root = tmp_path / "ws"
    root.mkdir()
    path = root / "plmlabel.db"
    from storage.db import MIGRATIONS, _migration_relative_paths

    before = MIGRATIONS.index(_migration_relative_paths)  # the schema version just before this migration
    with Database.open(path, create=True) as db:
        db.execute("update meta set value = ? where key = 'schema_version'", (str(before),))
        for sae_id, sae_path, model in (
            ("a", str(root / "saes" / "a"), str(root / "models" / "m.pt")),
            ("b", "/gone/original/ws/saes/b", "/opt/models/outside.pt"),  # copied before migrating
            ("c", "saes/c", "esm2_t6_8M_UR50D"),  # already relative: left alone
        ):
            db.table("saes").insert({
                "sae_id": sae_id, "architecture": "relu", "d_in": 4, "d_sae": 8, "path": sae_path,
                "plm_model": model, "weights_hash": "0", "source": "trained",
                "cfg": json.dumps({"plm_model": model, "layer": 1}), "created_at": "2025-01-01",
            })
        db.db.conn.commit()
    with Database.open(path) as db:
        assert db.schema_version == len(MIGRATIONS)
        rows = {r["sae_id"]: r for r in db.query("select sae_id, path, plm_model, cfg from saes")}
    assert (rows["a"]["path"], rows["a"]["plm_model"]) == ("saes/a", "models/m.pt")
    assert json.loads(rows["a"]["cfg"])["plm_model"] == "models/m.pt"
    assert (rows["b"]["path"], rows["b"]["plm_model"]) == ("saes/b", "/opt/models/outside.pt")
    assert (rows["c"]["path"], rows["c"]["plm_model"]) == ("saes/c", "esm2_t6_8M_UR50D")
    import sqlite_utils

    conn = sqlite3.connect(path)
    _migration_relative_paths(sqlite_utils.Database(conn))  # idempotent: a second run changes nothing
    assert conn.execute("select path, plm_model from saes where sae_id = 'a'").fetchone() == (
        "saes/a", "models/m.pt")
    conn.close()


@pytest.mark.slow
def test_a_copied_workspace_works_on_its_own_files(tmp_path, cli, swissprot_dir) -> None:
    original = tmp_path / "original"
    _ok(cli("init", "--workspace", original))
    _ok(cli("swissprot", "import", swissprot_dir / "sprot_sample.dat.gz", "--workspace", original))
    with Database.open(original / "plmlabel.db") as db:
        accessions = [r["accession"] for r in db.query(
            "select accession from proteins where length < 400 order by accession limit ?", (N_PROTEINS,))]
    listing = tmp_path / "proteins.txt"
    listing.write_text("\n".join(accessions) + "\n")
    checkpoint = tiny_checkpoint(original / "models")  # a checkpoint inside the workspace, as the demo's
    layer = TINY["num_layers"]
    _ok(cli("embed", "--model", checkpoint, "--layer", layer, "--proteins", listing, "--workspace", original))
    _ok(cli("sae", "train", "--name", SAE, "--model", checkpoint, "--layer", layer, "--arch", "topk",
            "--d-sae", "32", "--k", "4", "--tokens", "4000", "--batch-size", "256", "--device", "cpu",
            "--workspace", original))
    with Database.open(original / "plmlabel.db") as db:
        row = db.query("select path, plm_model, cfg from saes where sae_id = ?", (SAE,))[0]
    assert row["path"] == f"saes/{SAE}" and row["plm_model"] == "models/tiny_esm2.pt"
    assert json.loads(row["cfg"])["plm_model"] == "models/tiny_esm2.pt"

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)

    _ok(cli("index", SAE, "--workspace", copy, "--device", "cpu"))
    labeled = cli("label", SAE, "--top", "3", "--backend", "baseline", "--workspace", copy, "--json")
    _ok(labeled)
    with Database.open(copy / "plmlabel.db") as db:
        feature = db.query("select feature from labels where sae_id = ? and status = 'ok' limit 1",
                           (SAE,))[0]["feature"]
    shown = cli("show", SAE, feature, "--workspace", copy)
    _ok(shown)
    assert "No examples" not in shown.stdout
    exports = tmp_path / "exports"
    for fmt in ("html", "jsonl", "interplm", "interprot"):
        _ok(cli("export", SAE, "--format", fmt, "--out", exports / fmt, "--workspace", copy))
    written = "".join(p.read_text(encoding="utf-8") for p in exports.rglob("*") if p.is_file())
    for root in (original, copy, tmp_path):
        assert str(root) not in written  # no local path in a file meant to be shared
    line = json.loads((exports / "jsonl" / "labels.jsonl").read_text().splitlines()[0])
    assert line["plm_model"] == "tiny_esm2.pt"
    assert json.loads((exports / "html" / "plmlabel-export.json").read_text())["plm_model"] == "tiny_esm2.pt"
    assert "tiny_esm2.pt" in (exports / "html" / "index.html").read_text()
    # the copy's own checkpoint is the same model as the one its embeddings came from
    again = cli("embed", "--model", copy / "models" / "tiny_esm2.pt", "--layer", layer, "--proteins", listing,
                "--workspace", copy, "--json")
    _ok(again)
    evaluated = cli("sae", "eval", SAE, "--proteins", "10", "--device", "cpu", "--workspace", copy, "--json")
    _ok(evaluated)  # loads ESM-2 from the copy's models/ (the original's is gone)
