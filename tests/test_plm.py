"""sae/plm.py: loading fair-esm ESM-2 checkpoints and per-residue embeddings of one layer."""

from __future__ import annotations

import datetime
import random
import urllib.error
from argparse import Namespace

import numpy as np
import pytest
import torch

from sae.plm import (
    ESM2_MODELS,
    MAX_RESIDUES,
    embed_sequences,
    forward_layer,
    hub_weights_cached,
    load_esm,
    make_random_esm2,
    resolve_device,
    resolve_dtype,
    save_esm2_checkpoint,
    window_plan,
)
from storage.errors import InputError, NotFoundError
from tests.esm_fixtures import TINY, read_sprot_sequences, tiny_checkpoint

STANDARD = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("esm"))


@pytest.fixture(scope="module")
def plm(tiny_path):
    return load_esm(str(tiny_path), device="cpu")


@pytest.fixture
def sprot(swissprot_dir):
    return read_sprot_sequences(swissprot_dir / "sprot_sample.dat.gz", limit=40)


def _random_protein(length: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(STANDARD) for _ in range(length))


# --- loading ----------------------------------------------------------------------------------------
def test_table_lists_the_six_esm2_models():
    assert [s.num_layers for s in ESM2_MODELS.values()] == [6, 12, 30, 33, 36, 48]
    assert ESM2_MODELS["esm2_t33_650M_UR50D"].embed_dim == 1280
    assert ESM2_MODELS["esm2_t6_8M_UR50D"].embed_dim == 320


def test_checkpoint_loads_by_path_with_the_weights_it_was_saved_with(tiny_path, plm):
    original, _ = make_random_esm2(**TINY, seed=0)
    loaded = plm.model.state_dict()
    assert all(torch.equal(tensor, loaded[key]) for key, tensor in original.state_dict().items())
    assert (plm.num_layers, plm.embed_dim, plm.name) == (2, 32, str(tiny_path))
    assert not plm.model.training and plm.dtype == torch.float32


def test_checkpoint_file_holds_what_fair_esm_releases(tiny_path):
    with torch.serialization.safe_globals([Namespace]):
        data = torch.load(tiny_path, weights_only=True)
    assert data["cfg"]["model"].encoder_layers == 2
    assert "encoder.sentence_encoder.embed_tokens.weight" in data["model"]
    assert "encoder.lm_head.dense.weight" in data["model"]
    assert not any("regression" in key for key in data["model"])


def test_checkpoint_without_regression_file_loads_and_embeds_the_same(tmp_path, plm):
    bare = tiny_checkpoint(tmp_path, regression=False)
    assert not (tmp_path / "tiny_esm2-contact-regression.pt").exists()
    other = load_esm(str(bare), device="cpu")
    items = [("P1", "MKTAYIAKQRQISFVKSHFSRQ")]
    assert np.array_equal(dict(embed_sequences(other, items, 1))["P1"],
                          dict(embed_sequences(plm, items, 1))["P1"])


def test_forward_layer_matches_fair_esm_for_every_layer(plm):
    _, _, tokens = plm.batch_converter([("a", "MKTAYIAKQR"), ("b", "MUOBZX"), ("c", "MK")])
    with torch.no_grad():
        for layer in range(plm.num_layers + 1):
            expected = plm.model(tokens, repr_layers=[layer])["representations"][layer]
            assert torch.allclose(forward_layer(plm.model, tokens, layer), expected, atol=1e-6), layer


def test_embeddings_strip_bos_and_eos(plm):
    sequence = "MKTAYIAKQRQISFV"
    _, _, tokens = plm.batch_converter([("a", sequence)])
    with torch.no_grad():
        full = plm.model(tokens, repr_layers=[2])["representations"][2][0].numpy()
    (accession, rows), = embed_sequences(plm, [("a", sequence)], layer=2)
    assert accession == "a" and rows.dtype == np.float32 and rows.shape == (len(sequence), 32)
    np.testing.assert_allclose(rows, full[1:-1], atol=1e-6)


def test_missing_path_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="no checkpoint at"):
        load_esm(str(tmp_path / "absent.pt"))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(InputError, match="esm2_t6_8M_UR50D"):
        load_esm("esm2_t7_9M_UR50D")


def test_wrong_shape_checkpoint_is_a_clear_error(tmp_path):
    path = tiny_checkpoint(tmp_path)
    with torch.serialization.safe_globals([Namespace]):
        data = torch.load(path, weights_only=True)
    data["cfg"]["model"].encoder_embed_dim = 48  # config and weights disagree
    torch.save(data, path)
    with pytest.raises(InputError, match=r"does not fit an ESM-2 of 2 layers x 48 dims: .* shape \[33, 32\]"):
        load_esm(str(path))


def test_checkpoint_missing_a_tensor_is_a_clear_error(tmp_path):
    path = tiny_checkpoint(tmp_path)
    with torch.serialization.safe_globals([Namespace]):
        data = torch.load(path, weights_only=True)
    del data["model"]["encoder.sentence_encoder.layers.1.fc1.weight"]
    torch.save(data, path)
    with pytest.raises(InputError, match="layers.1.fc1.weight is missing"):
        load_esm(str(path))


@pytest.mark.parametrize("layout", ["args", "cfg-as-dict"])
def test_other_esm2_config_layouts_load(tmp_path, plm, layout):
    path = tiny_checkpoint(tmp_path, regression=False)
    with torch.serialization.safe_globals([Namespace]):
        data = torch.load(path, weights_only=True)
    cfg = data.pop("cfg")["model"]
    if layout == "args":
        data["args"] = cfg
    else:
        data["cfg"] = {"model": vars(cfg)}
    torch.save(data, path)
    loaded = load_esm(str(path), device="cpu")
    assert torch.equal(loaded.model.layers[1].fc2.weight, plm.model.layers[1].fc2.weight)


def test_esm1b_checkpoint_is_refused(tmp_path):
    path = tmp_path / "esm1b.pt"
    torch.save({"args": Namespace(arch="roberta_large"), "model": {}}, path)
    with pytest.raises(InputError, match="ESM-1/MSA checkpoint"):
        load_esm(str(path))


def test_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable fair-esm checkpoint"):
        load_esm(str(path))


def test_checkpoint_pickling_other_classes_is_refused_not_run(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"cfg": {"model": datetime.date(2020, 1, 1)}, "model": {}}, path)
    with pytest.raises(InputError, match="pickles datetime.date, which plmlabel will not unpickle"):
        load_esm(str(path))


def test_hub_name_offline_and_not_cached_is_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(NotFoundError, match=r"esm2_t6_8M_UR50D are not in the torch hub cache .*no network"):
        load_esm("esm2_t6_8M_UR50D", device="cpu")


def test_a_failed_hub_download_prints_nothing_before_our_message(tmp_path, monkeypatch, capfd):
    """torch.hub wrote `Downloading: ...` on stdout ahead of the "no weights" warning (and into --json)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(NotFoundError):
        load_esm("esm2_t6_8M_UR50D", device="cpu")
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err and out == ""


def test_hub_name_loads_from_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    spec = ESM2_MODELS["esm2_t6_8M_UR50D"]
    model, _ = make_random_esm2(spec.num_layers, spec.embed_dim, spec.attention_heads, seed=1)
    assert not hub_weights_cached("esm2_t6_8M_UR50D")
    save_esm2_checkpoint(model, tmp_path / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt", regression=False)
    assert hub_weights_cached("esm2_t6_8M_UR50D") and not hub_weights_cached("esm2_t12_35M_UR50D")
    plm = load_esm("esm2_t6_8M_UR50D", device="cpu")
    assert (plm.name, plm.num_layers, plm.embed_dim) == ("esm2_t6_8M_UR50D", 6, 320)
    assert torch.equal(plm.model.embed_tokens.weight, model.embed_tokens.weight)


def test_cached_file_of_the_wrong_size_for_the_hub_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    tiny_checkpoint(tmp_path / "hub" / "checkpoints", "esm2_t6_8M_UR50D.pt", regression=False)
    with pytest.raises(InputError, match="2 layers x 32 dims, but esm2_t6_8M_UR50D has 6 x 320"):
        load_esm("esm2_t6_8M_UR50D", device="cpu")


def test_device_and_dtype_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(InputError, match="needs a CUDA device"):
        resolve_dtype("bf16", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


# --- sequences --------------------------------------------------------------------------------------
def test_token_budget_batching_equals_one_at_a_time(plm, sprot):
    items = [(acc, seq) for acc, seq in sprot if len(seq) <= MAX_RESIDUES][:30]
    batched = dict(embed_sequences(plm, items, layer=1, max_tokens=4096))
    alone = dict(embed_sequences(plm, items, layer=1, max_tokens=1))
    assert sorted(batched) == sorted(acc for acc, _ in items)
    for accession, sequence in items:
        assert batched[accession].shape == (len(sequence), 32)
        np.testing.assert_allclose(batched[accession], alone[accession], atol=2e-5)


def test_proteins_come_back_shortest_first(plm):
    items = [("long", "M" * 50), ("short", "M" * 5), ("mid", "M" * 20)]
    assert [acc for acc, _ in embed_sequences(plm, items, 0)] == ["short", "mid", "long"]


def test_nonstandard_residues_are_alphabet_tokens_and_lowercase_is_uppercased(plm):
    items = [("P_odd", "MUOBZXAC"), ("P_low", "muobzxac")]
    result = dict(embed_sequences(plm, items, layer=2))
    _, _, tokens = plm.batch_converter([("x", "MUOBZXAC")])
    assert len(set(tokens[0, 1:-1].tolist())) == 8  # each letter its own token, none <unk>
    assert plm.alphabet.unk_idx not in tokens[0].tolist()
    with torch.no_grad():
        expected = plm.model(tokens, repr_layers=[2])["representations"][2][0, 1:-1].numpy()
    np.testing.assert_allclose(result["P_odd"], expected, atol=1e-6)
    np.testing.assert_array_equal(result["P_low"], result["P_odd"])


@pytest.mark.parametrize("sequence", ["MKT1AY", "MKT*", "MK-TA", "MK TA", "MKÅ", ""])
def test_other_characters_are_an_error_naming_the_protein(plm, sequence):
    with pytest.raises(InputError, match="protein Q_BAD"):
        list(embed_sequences(plm, [("P_OK", "MKV"), ("Q_BAD", sequence)], layer=1))


def test_layer_out_of_range_is_an_error(plm):
    with pytest.raises(InputError, match="layers 0..2"):
        list(embed_sequences(plm, [("a", "MKV")], layer=3))


# --- long proteins ----------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1022, 1023, 1500, 2044, 3000, 5111])
def test_window_plan_tiles_the_protein_and_keeps_each_residue_farthest_from_a_cut(length):
    plan = window_plan(length)
    assert plan[0][2] == 0 and plan[-1][3] == length
    assert all(a[3] == b[2] for a, b in zip(plan, plan[1:], strict=False))
    assert all(end - start == min(length, MAX_RESIDUES) for start, end, _, _ in plan)

    def room(window, position):  # distance to the nearest edge that cuts the protein
        start, end = window[0], window[1]
        left = position - start if start > 0 else length
        right = end - 1 - position if end < length else length
        return min(left, right)

    for chosen in plan:
        for position in range(chosen[2], chosen[3]):
            best = max(room(w, position) for w in plan if w[0] <= position < w[1])
            assert room(chosen, position) == best


def test_a_3000_residue_protein_gives_3000_rows_from_its_windows(plm):
    sequence = _random_protein(3000)
    (_, rows), = embed_sequences(plm, [("LONG", sequence)], layer=2)
    assert rows.shape == (3000, 32)
    plan = window_plan(3000)
    assert len(plan) == 4
    for start, end, keep_from, keep_to in plan:
        (_, direct), = embed_sequences(plm, [("W", sequence[start:end])], layer=2)
        np.testing.assert_allclose(rows[keep_from:keep_to], direct[keep_from - start:keep_to - start],
                                   atol=2e-5)
