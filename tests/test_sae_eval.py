"""`plmlabel sae train|eval|list|import` end to end on a tiny random ESM-2 and real Swiss-Prot sequences,
and the loss-recovered splice checked against SAEs whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae.embed import embed_proteins
from sae.evaluate import masked_lm_losses, reconstruction_metrics
from sae.model import create_sae
from sae.plm import load_esm
from sae.train import CHECKPOINT_NAME, train_in_workspace, training_dir
from storage.errors import InputError
from storage.workspace import Workspace
from tests.conftest import SHARED_SWISSPROT, invoke
from tests.esm_fixtures import insert_proteins, read_sprot_sequences, tiny_checkpoint

FIVE = ("mse", "fve", "l0", "dead_fraction", "loss_recovered")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A workspace with 60 Swiss-Prot proteins embedded by a tiny ESM-2 at layer 1, and a trained TopK SAE."""
    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    root = tmp_path_factory.mktemp("sae_eval")
    ws = Workspace(root / "ws")
    ws.init()
    checkpoint = tiny_checkpoint(root)
    insert_proteins(ws, read_sprot_sequences(SHARED_SWISSPROT / "sprot_sample.dat.gz", limit=60))
    embed_proteins(ws, str(checkpoint), 1, None, 4096, "cpu", "auto")
    result = invoke("sae", "train", "--workspace", ws.root, "--name", "tk", "--model", checkpoint,
                    "--layer", 1, "--arch", "topk", "--d-sae", 128, "--k", 8, "--tokens", 150_000,
                    "--batch-size", 1024, "--lr", 1e-3, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return ws, checkpoint, result.json()


def test_train_records_the_sae_only_when_finished(setup):
    ws, checkpoint, trained = setup
    assert trained["sae"]["source"] == "trained"
    assert trained["sae"]["plm_model"] == str(checkpoint) and trained["sae"]["layer"] == 1
    assert trained["training"]["steps"] == 147 and trained["training"]["final"]["l0"] == 8.0
    assert sorted(p.name for p in ws.sae_dir("tk").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert not training_dir(ws, "tk").exists()
    cfg = json.loads((ws.sae_dir("tk") / "cfg.json").read_text())
    assert cfg["training"]["holdout"]["fraction"] == 0.05 and cfg["norm_scale"] > 0
    listed = invoke("sae", "list", "--workspace", ws.root, "--json").json()
    assert [r["sae_id"] for r in listed] == ["tk"]
    plain = invoke("sae", "list", "--workspace", ws.root)
    assert plain.exit_code == 0 and "tk" in plain.stdout and "topk" in plain.stdout


def test_eval_reports_all_five_metrics_in_sane_ranges(setup):
    ws, _, _ = setup
    result = invoke("sae", "eval", "tk", "--workspace", ws.root, "--proteins", 20, "--device", "cpu",
                    "--json")
    assert result.exit_code == 0, result.stderr
    metrics = result.json()
    assert all(metrics[key] is not None for key in FIVE)
    assert metrics["heldout"] == "training split" and metrics["n_proteins"] >= 1
    assert 0 <= metrics["mse"] < 0.1
    assert 0.5 < metrics["fve"] <= 1.0
    assert 0 < metrics["l0"] <= 8
    assert 0 <= metrics["dead_fraction"] < 1
    assert 0.3 < metrics["loss_recovered"] < 1.3, metrics
    assert metrics["ce_zero"] > metrics["ce_sae"] > 0 and metrics["ce_clean"] > 0
    assert metrics["n_masked"] > 0
    stored = invoke("sae", "list", "--workspace", ws.root, "--json").json()[0]["metrics"]
    assert stored["loss_recovered"] == metrics["loss_recovered"]
    table = invoke("sae", "eval", "tk", "--workspace", ws.root, "--proteins", 5, "--no-loss-recovered")
    assert table.exit_code == 0 and "variance explained" in table.stdout


def _identity_and_null_saes(d: int):
    identity = create_sae("relu", d, 2 * d)
    null = create_sae("relu", d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        identity.W_enc.copy_(torch.cat([eye, -eye], dim=1))  # relu(x) - relu(-x) = x
        identity.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        identity.b_enc.zero_()
        identity.b_dec.zero_()
        for parameter in null.parameters():
            parameter.zero_()
    return identity.eval(), null.eval()


@pytest.mark.parametrize("layer", [0, 1, 2])  # embeddings, a middle block, the last (after the final norm)
def test_loss_recovered_is_one_for_a_perfect_sae_and_zero_for_a_null_one(setup, layer):
    _, checkpoint, _ = setup
    plm = load_esm(str(checkpoint), device="cpu")
    proteins = read_sprot_sequences(SHARED_SWISSPROT / "sprot_sample.dat.gz", limit=6)
    sequences = [(accession, sequence[:200]) for accession, sequence in proteins]
    identity, null = _identity_and_null_saes(plm.embed_dim)
    perfect = masked_lm_losses(identity, plm, layer, sequences, seed=1)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-4)
    assert perfect["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert perfect["ce_zero"] != pytest.approx(perfect["ce_clean"], abs=1e-3)  # the splice does something
    nothing = masked_lm_losses(null, plm, layer, sequences, seed=1)
    assert nothing["ce_sae"] == pytest.approx(nothing["ce_zero"], abs=1e-5)
    assert nothing["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert nothing["ce_clean"] == perfect["ce_clean"]  # the same seeded mask


def test_reconstruction_metrics_refuse_nan():
    sae = create_sae("relu", 8, 16)
    bad = torch.randn(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        reconstruction_metrics(sae, iter([bad]))


def test_interrupted_training_leaves_nothing_finished_and_resumes(setup):
    ws, checkpoint, _ = setup

    def interrupt(step, total, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_in_workspace(ws, "rl", model=str(checkpoint), layer=1, architecture="relu", d_sae=64,
                           tokens=20 * 256, batch_size=256, checkpoint_every=2, progress=interrupt)
    assert (training_dir(ws, "rl") / CHECKPOINT_NAME).exists()
    assert not ws.sae_dir("rl").exists()
    assert "rl" not in [r["sae_id"] for r in invoke("sae", "list", "--workspace", ws.root, "--json").json()]
    args = ("sae", "train", "--workspace", ws.root, "--name", "rl", "--model", checkpoint, "--layer", 1,
            "--arch", "relu", "--d-sae", 64, "--tokens", 20 * 256, "--batch-size", 256, "--device", "cpu",
            "--json")
    refused = invoke(*args)
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["training"]["resumed_from_step"] == 5 and resumed.json()["training"]["steps"] == 20
    assert not training_dir(ws, "rl").exists() and ws.sae_dir("rl").exists()


def test_bad_input_is_one_clear_line(setup, tmp_path):
    ws, checkpoint, _ = setup
    base = ("--workspace", ws.root, "--model", checkpoint)
    missing_layer = invoke("sae", "train", *base, "--layer", 2, "--name", "x", "--arch", "relu", "--d-sae", 8)
    assert missing_layer.exit_code == 2 and "run `plmlabel embed` first" in missing_layer.stderr
    assert "Traceback" not in missing_layer.stderr
    wrong_flag = invoke("sae", "train", *base, "--layer", 1, "--name", "x", "--arch", "topk", "--d-sae", 8,
                        "--l1", 2)
    assert wrong_flag.exit_code == 2 and "--l1 applies to relu" in wrong_flag.stderr
    unknown = invoke("sae", "eval", "nope", "--workspace", ws.root, "--json")
    assert unknown.exit_code == 2 and "no SAE named 'nope'; known:" in unknown.stderr

    folder = tmp_path / "narrow"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 16, "d_sae": 32}))
    save_file({"W_enc": torch.zeros(16, 32), "b_enc": torch.zeros(32), "W_dec": torch.zeros(32, 16),
               "b_dec": torch.zeros(16)}, str(folder / "sae_weights.safetensors"))
    narrow = invoke("sae", "import", folder, "--format", "saelens", "--name", "narrow", *base, "--layer", 1)
    assert narrow.exit_code == 2 and "d_in=16" in narrow.stderr and "width 32" in narrow.stderr
    assert not ws.sae_dir("narrow").exists()
    absent = invoke("sae", "import", tmp_path / "absent.pt", "--format", "interplm", "--name", "a", *base,
                    "--layer", 1)
    assert absent.exit_code == 2 and "no file at" in absent.stderr


def test_import_cli_then_eval_without_the_lm(setup, tmp_path):
    ws, checkpoint, _ = setup
    g = torch.Generator().manual_seed(0)
    torch.save({"bias": torch.zeros(32), "encoder.weight": torch.randn(64, 32, generator=g) * 0.2,
                "encoder.bias": torch.zeros(64), "decoder.weight": torch.randn(32, 64, generator=g) * 0.2},
               tmp_path / "ae_normalized.pt")
    args = ("sae", "import", tmp_path / "ae_normalized.pt", "--format", "interplm", "--name", "ip",
            "--workspace", ws.root, "--model", checkpoint, "--layer", 1, "--json")
    imported = invoke(*args)
    assert imported.exit_code == 0, imported.stderr
    assert imported.json()["source"] == "imported:interplm"
    assert invoke(*args).exit_code == 2
    assert invoke(*args, "--force").exit_code == 0
    metrics = invoke("sae", "eval", "ip", "--workspace", ws.root, "--no-loss-recovered", "--json").json()
    assert metrics["heldout"] == "sample" and metrics["loss_recovered"] is None
    assert metrics["mse"] > 0 and metrics["l0"] > 0
    assert Path(imported.json()["path"]).name == "ip"


def test_eval_says_which_split_why_fewer_and_one_dead_definition(setup):
    """--proteins defaults to 100 but the training split holds out 5% of 60: the title says so; the dead
    fraction says over how many residues, and the index's figure (same definition) stands beside it."""
    from sae.index import build_index

    ws, _, _ = setup
    metrics = invoke("sae", "eval", "tk", "--workspace", ws.root, "--no-loss-recovered", "--json").json()
    assert metrics["n_requested"] == 100 and metrics["n_stored"] == 60 and metrics["holdout_fraction"] == 0.05
    assert metrics["n_proteins"] == metrics["n_available"] < 100
    plain = invoke("sae", "eval", "tk", "--workspace", ws.root, "--no-loss-recovered")
    assert plain.exit_code == 0, plain.stderr
    text = " ".join(plain.stdout.split())
    assert (f"tk: {metrics['n_proteins']} held-out proteins of the training split (all it holds out: 5% of "
            "the 60 embedded; the rest trained the SAE, so --proteins 100 could not be met), "
            f"{metrics['n_tokens']:,} residues") in text
    assert f"{metrics['dead_fraction']:.4g} over these {metrics['n_tokens']:,} residues" in text
    assert "dead fraction in the index" not in text

    summary = build_index(ws, "tk", seed=0)
    after = invoke("sae", "eval", "tk", "--workspace", ws.root, "--no-loss-recovered", "--json").json()
    assert after["index_dead_fraction"] == summary.n_dead_features / summary.n_features
    assert (after["index_n_tokens"], after["index_n_proteins"]) == (summary.n_residues, summary.n_proteins)
    assert after["index_dead_fraction"] <= after["dead_fraction"]  # more residues, fewer never fire
    plain = invoke("sae", "eval", "tk", "--workspace", ws.root, "--no-loss-recovered", "--json")
    table = invoke("sae", "eval", "tk", "--workspace", ws.root, "--no-loss-recovered").stdout
    assert plain.exit_code == 0
    assert table.splitlines()[-1] == (
        f"dead fraction in the index (same definition): {after['index_dead_fraction']:.4g} over its "
        f"{summary.n_residues:,} residues of {summary.n_proteins:,} proteins; fewer residues here leave more "
        "features silent.")
