"""The embed job and `plmlabel embed`: shards on disk, resume, changed protein sets, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae.embed import embed_proteins
from sae.embeddings import EmbeddingStore
from sae.plm import embed_sequences, load_esm, make_random_esm2, save_esm2_checkpoint
from storage.errors import InputError
from storage.workspace import CONFIG_NAME, Workspace
from tests.esm_fixtures import insert_proteins, read_sprot_sequences, tiny_checkpoint

SHARD = "2500"  # residues per shard: a dozen Swiss-Prot proteins make several shards


@pytest.fixture
def proteins(swissprot_dir):
    return [(acc, seq) for acc, seq in read_sprot_sequences(swissprot_dir / "sprot_sample.dat.gz", 20)
            if len(seq) < 1200][:12]


@pytest.fixture
def checkpoint(tmp_path):
    return tiny_checkpoint(tmp_path / "models")


@pytest.fixture
def ws(workspace, proteins):
    insert_proteins(workspace, proteins)
    return workspace


def _embed(cli, ws, checkpoint, *extra):
    return cli("embed", "--workspace", ws.root, "--model", checkpoint, "--layer", "2", "--device", "cpu",
               "--shard-residues", SHARD, *extra)


def test_embed_writes_every_protein_once_with_the_models_embeddings(cli, ws, checkpoint, proteins):
    result = _embed(cli, ws, checkpoint, "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["n_proteins"] == len(proteins)
    assert summary["n_residues"] == sum(len(s) for _, s in proteins)
    assert summary["n_shards"] > 2 and summary["n_skipped_shards"] == 0
    assert summary["model"] == str(checkpoint) and summary["layer"] == 2
    assert (summary["device"], summary["dtype"]) == ("cpu", "float32")

    store = EmbeddingStore(summary["path"]).require()
    assert store.path == ws.embeddings_dir / "tiny_esm2" / "layer_2"
    assert store.manifest["d_model"] == 32 and len(store.shard_numbers()) == summary["n_shards"]
    assert sorted(store.accessions()) == sorted(acc for acc, _ in proteins)
    lengths = [len(seq) for acc in store.accessions() for a, seq in proteins if a == acc]
    assert lengths == sorted(lengths)  # planned by length
    expected = dict(embed_sequences(load_esm(str(checkpoint), "cpu"), proteins, layer=2))
    for accession, rows in store.iter_proteins():
        np.testing.assert_allclose(rows.astype(np.float32), expected[accession], atol=1e-2, rtol=1e-2)


def test_rerun_skips_finished_shards_without_loading_the_model(cli, ws, checkpoint):
    first = _embed(cli, ws, checkpoint, "--json").json()
    folder = ws.embeddings_dir / "tiny_esm2" / "layer_2"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*")}
    second = _embed(cli, ws, checkpoint, "--json").json()
    assert second["n_skipped_shards"] == second["n_shards"] == first["n_shards"]
    assert second["device"] is None  # nothing was left to compute
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*")} == stamps


def test_interrupted_run_resumes_where_it_stopped(ws, checkpoint, proteins, tmp_path):
    path = ws.embeddings_dir / "tiny_esm2" / "layer_2"

    def stop_after_first_shard(done, total):
        if (path / "shard_00000.json").exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_proteins(ws, str(checkpoint), 2, None, 4096, "cpu", "auto", stop_after_first_shard,
                       shard_residues=2500)
    assert EmbeddingStore(path).shard_numbers() == [0]
    resumed = embed_proteins(ws, str(checkpoint), 2, None, 4096, "cpu", "auto", shard_residues=2500)
    assert resumed.n_skipped_shards == 1 and resumed.n_shards > 2

    other = Workspace(tmp_path / "other")
    other.init()
    insert_proteins(other, proteins)
    fresh = embed_proteins(other, str(checkpoint), 2, None, 4096, "cpu", "auto", shard_residues=2500)
    assert fresh.n_shards == resumed.n_shards
    resumed_store = EmbeddingStore(path)
    fresh_store = EmbeddingStore(fresh.path)
    assert resumed_store.shard_numbers() == fresh_store.shard_numbers()
    assert [resumed_store.shard_index(n) for n in resumed_store.shard_numbers()] == \
        [fresh_store.shard_index(n) for n in fresh_store.shard_numbers()]
    plan = json.loads((path / "plan.json").read_text())
    assert [s["number"] for s in plan["shards"]] == EmbeddingStore(path).shard_numbers()


def test_new_proteins_go_to_new_shards_and_changed_ones_are_redone(cli, ws, checkpoint, swissprot_dir):
    first = _embed(cli, ws, checkpoint, "--json").json()
    extra = read_sprot_sequences(swissprot_dir / "sprot_sample.dat.gz", 40)[30:33]
    insert_proteins(ws, extra)
    second = _embed(cli, ws, checkpoint, "--json").json()
    assert second["n_skipped_shards"] == first["n_shards"]
    assert second["n_shards"] > first["n_shards"]

    store = EmbeddingStore(second["path"])
    accession = store.shard_index(0)["accessions"][0]
    old = store.get(accession)
    with ws.db() as db:
        sequence = db.query("select sequence from proteins where accession = ?", (accession,))[0]["sequence"]
    insert_proteins(ws, [(accession, "W" + sequence[1:])])
    third = _embed(cli, ws, checkpoint, "--json").json()
    assert third["n_skipped_shards"] == second["n_shards"] - 1
    assert not np.array_equal(store.get(accession), old)
    assert sorted(store.accessions()) == sorted(set(store.accessions()))


def test_accession_file_embeds_only_those(cli, ws, checkpoint, proteins, tmp_path):
    chosen = [acc for acc, _ in proteins[:3]]
    listing = tmp_path / "chosen.txt"
    listing.write_text("# three of them\n" + "\n".join(chosen) + "\n\n")
    result = _embed(cli, ws, checkpoint, "--proteins", listing, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["n_proteins"] == 3
    assert sorted(EmbeddingStore(result.json()["path"]).accessions()) == sorted(chosen)


def test_plain_output_and_config_defaults(cli, ws, checkpoint):
    config = ws.config_path.read_text().replace('model = "esm2_t6_8M_UR50D"', f'model = "{checkpoint}"')
    ws.config_path.write_text(config.replace("layer = 4", "layer = 1"))
    result = cli("embed", "--workspace", ws.root, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Embedded 12 proteins (")
    assert (ws.embeddings_dir / "tiny_esm2" / "layer_1" / "shard_00000.json").exists()
    assert ws.config_path.name == CONFIG_NAME


def _no_shards(ws) -> bool:
    return not list(ws.embeddings_dir.rglob("shard_*.json"))


def test_unknown_accession_in_file_is_one_line_error(cli, ws, checkpoint, tmp_path):
    listing = tmp_path / "ids.txt"
    listing.write_text("P69905\nNOT_AN_ID\n")
    insert_proteins(ws, [("P69905", "MVLSPADKTNVKAAWGKVGAHAGEY")])
    result = _embed(cli, ws, checkpoint, "--proteins", listing)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: 1 accession(s) are not in the workspace: NOT_AN_ID."
    assert _no_shards(ws)


def test_missing_accession_file_is_an_error(cli, ws, checkpoint, tmp_path):
    result = _embed(cli, ws, checkpoint, "--proteins", tmp_path / "absent.txt")
    assert result.exit_code == 2 and "no accession file at" in result.stderr


def test_empty_workspace_is_an_error(cli, workspace, checkpoint):
    result = _embed(cli, workspace, checkpoint)
    assert result.exit_code == 2
    assert "no proteins to embed" in result.stderr and "Traceback" not in result.stderr


def test_bad_residue_fails_before_any_shard_is_written(cli, ws, checkpoint):
    insert_proteins(ws, [("Z9ZZZ9", "MKV1LL")])
    result = _embed(cli, ws, checkpoint)
    assert result.exit_code == 2 and "protein Z9ZZZ9 has '1' at residue 4" in result.stderr
    assert _no_shards(ws)


def test_missing_and_wrong_shape_checkpoints_are_one_line_errors(cli, ws, tmp_path):
    result = _embed(cli, ws, tmp_path / "absent.pt")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: no checkpoint at {tmp_path / 'absent.pt'}."
    wrong = tiny_checkpoint(tmp_path, "wrong.pt", embed_dim=48)
    wrong.with_name("wrong-contact-regression.pt").replace(tmp_path / "unused.pt")
    data = torch.load(wrong, weights_only=False)
    data["cfg"]["model"].encoder_embed_dim = 32
    torch.save(data, wrong)
    result = _embed(cli, ws, wrong)
    assert result.exit_code == 2 and "does not fit an ESM-2 of 2 layers x 32 dims" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _no_shards(ws)


def test_nan_embeddings_are_refused_and_nothing_is_stored(cli, ws, tmp_path):
    model, _ = make_random_esm2(num_layers=2, embed_dim=32, attention_heads=4)
    with torch.no_grad():
        model.layers[0].fc1.weight[0, 0] = float("nan")
    broken = save_esm2_checkpoint(model, tmp_path / "broken.pt")
    result = _embed(cli, ws, broken)
    assert result.exit_code == 2 and "contains NaN or infinite values" in result.stderr
    assert _no_shards(ws)


def test_layer_out_of_range_is_an_error(cli, ws, checkpoint):
    result = cli("embed", "--workspace", ws.root, "--model", checkpoint, "--layer", "3", "--device", "cpu")
    assert result.exit_code == 2 and "layers 0..2" in result.stderr
    result = cli("embed", "--workspace", ws.root, "--model", "esm2_t6_8M_UR50D", "--layer", "7")
    assert result.exit_code == 2 and "layers 0..6" in result.stderr


def test_embed_has_help(cli):
    result = cli("embed", "--help")
    assert result.exit_code == 0 and "--max-tokens" in result.stdout


def test_library_refuses_a_negative_layer(ws, checkpoint):
    with pytest.raises(InputError, match="layer must be 0 or more"):
        embed_proteins(ws, str(checkpoint), -1, None, 4096, "cpu", "auto")


def _tree(ws):
    return sorted(str(p.relative_to(ws.root)) for p in ws.embeddings_dir.rglob("*")) \
        if ws.embeddings_dir.exists() else []


def test_refused_runs_leave_no_folders_behind(cli, ws, checkpoint, tmp_path):
    before = _tree(ws)
    assert _embed(cli, ws, tmp_path / "absent.pt").exit_code == 2
    result = cli("embed", "--workspace", ws.root, "--model", checkpoint, "--layer", "3", "--device", "cpu")
    assert result.exit_code == 2
    assert _tree(ws) == before  # no embeddings/<model>/layer_N/.lock debris


def test_interrupt_says_how_many_proteins_are_done(ws, checkpoint, proteins):
    from sae.embed import EmbedInterrupted

    path = ws.embeddings_dir / "tiny_esm2" / "layer_2"

    def stop_after_two_shards(done, total):
        if (path / "shard_00001.json").exists():
            raise KeyboardInterrupt

    with pytest.raises(EmbedInterrupted) as stop:
        embed_proteins(ws, str(checkpoint), 2, None, 4096, "cpu", "auto", stop_after_two_shards,
                       shard_residues=2500)
    store = EmbeddingStore(path)
    assert stop.value.n_shards == 2 == len(store.shard_numbers())
    assert stop.value.n_done == len(store.accessions()) and stop.value.n_proteins == len(proteins)


def test_cli_interrupt_message(cli, ws, checkpoint, monkeypatch):
    import agent.cli.embed_cmd as embed_cmd
    from sae.embed import EmbedInterrupted

    def interrupted(*args, **kwargs):
        raise EmbedInterrupted(5, 12, 2)

    monkeypatch.setattr(embed_cmd, "embed_proteins", interrupted)
    result = _embed(cli, ws, checkpoint)
    assert result.exit_code == 130
    assert result.stderr.strip() == ("interrupted: 5 of 12 proteins are embedded (2 finished shards); "
                                     "run the same command again to continue.")


def test_new_store_sizes_shards_by_time(ws, checkpoint, monkeypatch):
    import sae.embed as embed

    monkeypatch.setattr(embed, "PROBE_RESIDUES", 1500)
    monkeypatch.setattr(embed, "SHARD_SECONDS", 1e-9)  # every later shard: the 1,024-residue floor
    summary = embed_proteins(ws, str(checkpoint), 2, None, 4096, "cpu", "auto")
    store = EmbeddingStore(summary.path)
    sizes = [store.shard_index(n)["offsets"][-1] for n in store.shard_numbers()]
    plan = json.loads((store.path / "plan.json").read_text())
    assert plan["shard_residues"] == 1024 and sizes[0] <= 1500 + 1200
    assert [s["number"] for s in plan["shards"]] == store.shard_numbers()
    assert sorted(store.accessions()) == sorted(set(store.accessions())) and len(sizes) > 3
