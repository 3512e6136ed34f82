"""Steering: the splice is exact when nothing changes, a planted direction moves its residues, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae.model import create_sae, install_sae, weights_hash
from sae.plm import load_esm
from sae.steer import parse_clamp, parse_positions, spliced, tokenize
from sae.steer_run import steer_loaded
from storage.errors import InputError
from tests.esm_fixtures import read_sprot_sequences, tiny_checkpoint
from tests.steer_fixtures import PLANTED_FEATURE, planted_sae

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA GPU"))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("esm"))


@pytest.fixture(scope="module")
def sequences() -> list[str]:
    from tests.conftest import SHARED_SWISSPROT

    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    items = read_sprot_sequences(SHARED_SWISSPROT / "sprot_sample.dat.gz", limit=200)
    return [s for _, s in items if 40 <= len(s) <= 160][:4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("architecture,cfg", [("relu", {}), ("topk", {"k": 4}),
                                              ("relu", {"normalization": "layer_norm"})])
def test_clamp_to_current_value_reproduces_logits_exactly(checkpoint, sequences, device, layer, architecture,
                                                          cfg):
    plm = load_esm(str(checkpoint), device=device, dtype="fp32")
    torch.manual_seed(1)
    sae = create_sae(architecture, plm.embed_dim, 24, **cfg).to(device).eval()
    sequence = sequences[0]
    tokens = tokenize(plm.alphabet, sequence).to(plm.device)
    with torch.no_grad():
        unmodified = plm.model(tokens)["logits"]
        for feature in (0, 5):
            with spliced(plm.model, sae, layer, feature, list(range(len(sequence))), None):
                same = plm.model(tokens)["logits"]
            assert torch.equal(same, unmodified)
        with spliced(plm.model, sae, layer, 3, [], 100.0):  # clamping nothing
            assert torch.equal(plm.model(tokens)["logits"], unmodified)
    report = steer_loaded(plm, sae, layer, 0, sequence, clamp=parse_clamp("current"))
    assert report.max_abs_logit_diff == 0.0
    assert all(row.total_variation == 0.0 for row in report.positions_report)


def test_splice_keeps_the_reconstruction_error(checkpoint, sequences):
    """A clamp moves the stream by exactly (c - f) times the decoder row (ReLU, no normalisation)."""
    plm = load_esm(str(checkpoint), device="cpu")
    sae = planted_sae(plm, 1, sequences)
    tokens = tokenize(plm.alphabet, sequences[0])
    captured: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}

    def keep(into: dict[str, torch.Tensor]):
        def hook(_module, _args, out) -> None:  # returns None: reads, never replaces
            into["x"] = out[0]
        return hook

    handle = plm.model.layers[0].register_forward_hook(keep(captured))
    with torch.no_grad():
        plm.model(tokens)
        handle.remove()
        x = captured["x"][1:-1, 0]
        before = sae.encode(x)[:, PLANTED_FEATURE]
        clamp_value = 7.0
        with spliced(plm.model, sae, 1, PLANTED_FEATURE, [2, 5], clamp_value):
            h = plm.model.layers[0].register_forward_hook(keep(seen))
            plm.model(tokens)
            h.remove()
    moved = seen["x"][1:-1, 0]
    expected = x.clone()
    for p in (2, 5):
        expected[p] = x[p] + (clamp_value - before[p]) * sae.W_dec[PLANTED_FEATURE]
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(moved[[0, 1, 3, 4]], x[[0, 1, 3, 4]])


@pytest.mark.parametrize("device", DEVICES)
def test_large_clamp_moves_the_planted_residues_up(checkpoint, sequences, device):
    plm = load_esm(str(checkpoint), device=device, dtype="fp32")
    sae = planted_sae(plm, 1, sequences, residues="W").to(device)
    sequence = sequences[1]
    small = steer_loaded(plm, sae, 1, PLANTED_FEATURE, sequence, clamp=parse_clamp("2"), positions="3-12")
    large = steer_loaded(plm, sae, 1, PLANTED_FEATURE, sequence, clamp=parse_clamp("20"), positions="3-12",
                         n_samples=3, seed=4)
    w_small = next(e for e in small.enrichment if e.amino_acid == "W")
    w_large = next(e for e in large.enrichment if e.amino_acid == "W")
    assert large.enrichment[0].amino_acid == "W"
    assert w_large.delta > w_small.delta > 0
    assert w_large.freq_steered > w_large.freq_base
    assert large.positions == list(range(3, 13))
    assert len(large.samples) == len(large.base_samples) == 3
    assert all(len(s) == len(sequence) and set(s) <= set("ACDEFGHIKLMNPQRSTVWY") for s in large.samples)
    again = steer_loaded(plm, sae, 1, PLANTED_FEATURE, sequence, clamp=parse_clamp("20"), positions="3-12",
                         n_samples=3, seed=4)
    assert again.samples == large.samples  # seeded
    clamped_rows = [r for r in large.positions_report if r.clamped]
    assert all(r.gains and r.gains[0][0] == "W" for r in clamped_rows)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-1x", "-0.5", "abc", "x"])
def test_bad_clamp(text):
    with pytest.raises(InputError):
        parse_clamp(text)


def test_clamp_forms():
    assert parse_clamp("3x").resolve(2.0) == 6.0
    assert parse_clamp("1.5").resolve(None) == 1.5
    assert parse_clamp("current").resolve(9.0) is None
    with pytest.raises(InputError, match="needs the feature's max"):
        parse_clamp("2x").resolve(None)


@pytest.mark.parametrize("text", ["0", "11", "5-12", "3-2", "a", "1-"])
def test_positions_outside_or_malformed(text):
    with pytest.raises(InputError):
        parse_positions(text, 10)


def test_positions_ranges():
    assert parse_positions("1-3,7,3", 10) == [0, 1, 2, 6]
    assert parse_positions(None, 4) == [0, 1, 2, 3]


def test_steer_refuses_bad_input(checkpoint, sequences):
    plm = load_esm(str(checkpoint), device="cpu")
    sae = create_sae("relu", plm.embed_dim, 8)
    with pytest.raises(InputError, match="'J' at residue 3"):
        steer_loaded(plm, sae, 1, 0, "MKJLV", clamp=parse_clamp("1"))
    with pytest.raises(InputError, match="layer 5, which this ESM-2 does not have"):
        steer_loaded(plm, sae, 5, 0, "MKLV", clamp=parse_clamp("1"))
    with pytest.raises(InputError, match="out of range"):
        steer_loaded(plm, sae, 1, 8, "MKLV", clamp=parse_clamp("1"))
    with pytest.raises(InputError, match="width"):
        steer_loaded(plm, create_sae("relu", 48, 8), 1, 0, "MKLV", clamp=parse_clamp("1"))


# --- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def steer_workspace(workspace, checkpoint, sequences):
    from storage.features_store import FeatureStats, write_feature_stats
    from storage.saes import SaeRecord, record_sae
    from tests.esm_fixtures import insert_proteins

    plm = load_esm(str(checkpoint), device="cpu")
    sae = planted_sae(plm, 1, sequences)
    directory = install_sae(sae, workspace.sae_dir("steer"))
    insert_proteins(workspace, [("P00001", sequences[1])])
    relative = str(directory.relative_to(workspace.root))
    with workspace.db() as db:
        record_sae(db, SaeRecord(sae_id="steer", architecture="relu", d_in=32, d_sae=sae.d_sae,
                                 plm_model=str(checkpoint), layer=1, path=relative,
                                 weights_hash=weights_hash(directory), source="trained"))
        record_sae(db, SaeRecord(sae_id="deep", architecture="relu", d_in=32, d_sae=sae.d_sae,
                                 plm_model=str(checkpoint), layer=7, path=relative,
                                 weights_hash=weights_hash(directory), source="trained"))
        write_feature_stats(db, [FeatureStats(sae_id="steer", feature=f, max_activation=2.0,
                                              frac_residues=0.1,
                                              frac_proteins=0.5) for f in range(sae.d_sae)])
    return workspace


def test_steer_command_json(cli, steer_workspace, sequences):
    result = cli("steer", "steer", str(PLANTED_FEATURE), "--accession", "P00001", "--clamp", "10x",
                 "--positions", "2-6", "--samples", "2", "--device", "cpu", "--json",
                 "-w", str(steer_workspace.root))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["clamp"] == 20.0 and data["positions"] == [2, 3, 4, 5, 6] and data["layer"] == 1
    assert data["enrichment"][0]["amino_acid"] == "W"
    assert len(data["samples"]) == 2 and data["seconds_per_sample"] > 0
    table = cli("steer", "steer", "0", "--sequence", sequences[0], "--clamp", "current",
                "-w", str(steer_workspace.root))
    assert table.exit_code == 0, table.stderr
    assert "max |change| 0" in table.stdout and "Enrichment" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--clamp", "nan"], "not a finite number"),
    (["--clamp", "-2x"], "negative multiple"),
    (["--positions", "1-999"], "outside the sequence"),
    (["--sequence", "MKV*L"], "'*' at residue 4"),
    (["--samples", "-1"], "--samples must be >= 0"),
])
def test_steer_command_bad_input(cli, steer_workspace, args, message):
    base = ["steer", "steer", "0", "-w", str(steer_workspace.root)]
    if "--sequence" not in args:
        base += ["--accession", "P00001"]
    result = cli(*base, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_steer_command_layer_missing(cli, steer_workspace):
    result = cli("steer", "deep", "0", "--sequence", "MKVL", "--clamp", "1", "-w", str(steer_workspace.root))
    assert result.exit_code == 2
    assert "layer 7, which this ESM-2 does not have" in result.stderr
