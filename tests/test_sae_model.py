"""SAE architectures, the registry, save/load and the `saes` table."""

from __future__ import annotations

import json

import pytest
import torch

from sae.model import (
    CFG_FILENAME,
    REGISTRY,
    WEIGHTS_FILENAME,
    Registry,
    SAEConfig,
    create_sae,
    load_sae,
    read_config,
    save_sae,
    weights_hash,
)
from storage.db import Database
from storage.errors import InputError, NotFoundError
from storage.saes import SaeRecord, get_sae, list_saes, record_sae, set_sae_metrics

ARCH_KWARGS = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "topk_rescaled": {"k": 4}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sae(arch: str, normalization: str = "none", d_in: int = 16, d_sae: int = 48):
    torch.manual_seed(0)
    extra = {"norm_scale": 0.5} if normalization == "scale" else {}
    sae = create_sae(arch, d_in, d_sae, normalization=normalization, plm_model="esm2_t6_8M_UR50D", layer=3,
                     **ARCH_KWARGS.get(arch, {}), **extra)
    with torch.no_grad():  # non-trivial biases and thresholds, so the round trip checks them too
        for name, parameter in sae.named_parameters():
            if name.startswith("b_") or name == "r_mag":
                parameter.normal_(0, 0.5 if name == "b_dec" else 0.1)
    if arch == "batchtopk":
        sae.threshold.fill_(0.05)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.log_threshold.uniform_(-4, -1)
    if arch == "topk_rescaled":
        sae.feature_scale.uniform_(0.5, 2.0)
        sae.feature_scale[:3] = 0.0  # dead features
    return sae.eval()


def test_registry_lists_the_architectures():
    assert sorted(REGISTRY) == ["batchtopk", "gated", "jumprelu", "relu", "topk", "topk_rescaled"]
    for key, (cfg_class, model_class) in REGISTRY.items():
        assert cfg_class.model_fields["architecture"].default == key
        assert model_class.config_class is cfg_class


def test_registry_refuses_duplicates_and_names_unknown_keys():
    cfg_class, model_class = REGISTRY["relu"]
    registry = Registry(lambda: [("relu", cfg_class, model_class)])
    with pytest.raises(ValueError, match="already registered"):
        registry.register("relu", cfg_class, model_class)
    with pytest.raises(ValueError, match="already registered"):
        Registry(lambda: [("a", cfg_class, model_class), ("a", cfg_class, model_class)])["a"]
    with pytest.raises(InputError, match="unknown SAE architecture 'gated'; known: relu"):
        registry["gated"]


@pytest.mark.parametrize("normalization", ["none", "scale", "layer_norm", "unit_norm"])
@pytest.mark.parametrize("arch", list(REGISTRY))
def test_save_then_load_gives_identical_outputs(tmp_path, arch, normalization):
    sae = _sae(arch, normalization)
    x = torch.randn(2, 7, 16) * 3 + 1
    recon, feats = sae(x)
    save_sae(sae, tmp_path / "s")
    loaded = load_sae(tmp_path / "s")
    assert type(loaded) is type(sae)
    assert loaded.cfg == sae.cfg
    recon2, feats2 = loaded(x)
    assert torch.equal(feats, feats2)
    assert torch.equal(recon, recon2)
    assert torch.equal(loaded.encode(x), feats)
    assert (feats > 0).any()


def test_saved_layout_is_saelens(tmp_path):
    save_sae(_sae("jumprelu"), tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == 16 and cfg["d_sae"] == 48
    assert cfg["plmlabel_architecture"] == "jumprelu" and cfg["normalize_activations"] == "none"
    assert cfg["plm_model"] == "esm2_t6_8M_UR50D" and cfg["layer"] == 3 and cfg["format_version"] == 2
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / WEIGHTS_FILENAME))
    assert {name: tuple(t.shape) for name, t in tensors.items()} == {
        "W_enc": (16, 48), "b_enc": (48,), "W_dec": (48, 16), "b_dec": (16,), "threshold": (48,)}


def test_topk_keeps_k_and_batchtopk_uses_its_threshold():
    x = torch.randn(50, 16)
    assert ((_sae("topk").encode(x) > 0).sum(-1) <= 4).all()
    bt = _sae("batchtopk")
    hidden = bt.pre_activation(bt.normalize(x)[0])
    feats = bt.encode(x)
    assert torch.equal(feats > 0, hidden > 0.05)


def test_encode_takes_raw_embeddings_and_decode_inverts_the_normalisation():
    sae = _sae("relu", "layer_norm")
    x = torch.randn(5, 16) * 4 + 2
    xn, state = sae.normalize(x)
    assert torch.allclose(xn.mean(-1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(sae.denormalize(xn, state), x, atol=1e-4)
    recon, feats = sae(x)
    assert torch.allclose(sae.decode(feats, state), recon)
    with pytest.raises(ValueError, match="NormState"):
        sae.decode(feats)
    scaled = _sae("relu", "scale")
    assert torch.allclose(scaled.decode(scaled.encode(x)), scaled(x).recon)


def test_input_of_the_wrong_width_is_one_clear_error():
    with pytest.raises(InputError, match="width 16, got width 20"):
        _sae("topk").encode(torch.randn(3, 20))


def test_config_ignores_unknown_keys_and_upgrades_old_ones(tmp_path):
    save_sae(_sae("relu"), tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    for key in ("normalization", "plm_model", "layer", "format_version"):
        del cfg[key]
    cfg.update({"normalize_activations": "layer_norm", "model_name": "esm2_t12_35M_UR50D", "hook_layer": 7,
                "some_future_key": [1, 2]})
    (tmp_path / CFG_FILENAME).write_text(json.dumps(cfg))
    loaded = read_config(tmp_path)
    assert (loaded.normalization, loaded.plm_model, loaded.layer) == ("layer_norm", "esm2_t12_35M_UR50D", 7)
    assert loaded.format_version == 1
    assert not hasattr(loaded, "some_future_key")


def test_bad_configs_are_input_errors():
    with pytest.raises(InputError, match="k"):
        create_sae("topk", 16, 8, k=10)
    with pytest.raises(InputError, match="k"):
        create_sae("topk", 16, 8)
    with pytest.raises(InputError, match="d_sae"):
        create_sae("relu", 16, 0)
    with pytest.raises(InputError, match="unknown SAE architecture"):
        create_sae("mystery", 16, 32)
    assert SAEConfig(architecture="relu", d_in=2, d_sae=3).normalization == "none"


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(NotFoundError, match="no SAE folder"):
        load_sae(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="missing cfg.json"):
        load_sae(tmp_path / "empty")
    save_sae(_sae("topk"), tmp_path / "s")
    (tmp_path / "s" / WEIGHTS_FILENAME).write_bytes(b"not safetensors at all")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_sae(tmp_path / "s")
    (tmp_path / "s" / WEIGHTS_FILENAME).unlink()
    with pytest.raises(NotFoundError, match="no weights file"):
        load_sae(tmp_path / "s")
    (tmp_path / "s" / CFG_FILENAME).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_sae(tmp_path / "s")


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    save_sae(_sae("relu", d_sae=48), tmp_path / "a")
    save_sae(_sae("relu", d_sae=64), tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_FILENAME).write_bytes((tmp_path / "b" / WEIGHTS_FILENAME).read_bytes())
    with pytest.raises(InputError, match=r"W_dec has shape \(64, 16\), expected \(48, 16\)"):
        load_sae(tmp_path / "a")


def test_weights_hash_follows_the_weights(tmp_path):
    save_sae(_sae("relu"), tmp_path / "a")
    first = weights_hash(tmp_path / "a")
    assert len(first) == 64 and first == weights_hash(tmp_path / "a")
    sae = _sae("relu")
    with torch.no_grad():
        sae.W_dec[0, 0] += 1
    save_sae(sae, tmp_path / "a")
    assert weights_hash(tmp_path / "a") != first


def _record(sae_id: str, **changes) -> SaeRecord:
    base = dict(sae_id=sae_id, architecture="topk", d_in=320, d_sae=4096, k=32, plm_model="esm2_t6_8M_UR50D",
                layer=4, path=f"/w/saes/{sae_id}", weights_hash="ab" * 32, source="trained",
                cfg={"architecture": "topk"})
    return SaeRecord(**{**base, **changes})


def test_saes_table_records_gets_lists_and_stores_metrics():
    db = Database.open(":memory:")
    with pytest.raises(NotFoundError, match="no SAEs yet"):
        get_sae(db, "x")
    record_sae(db, _record("b"))
    record_sae(db, _record("a", source="imported:interplm", k=None))
    record_sae(db, _record("b", d_sae=8192))  # upsert
    assert get_sae(db, "b").d_sae == 8192
    assert get_sae(db, "a").k is None and get_sae(db, "a").cfg == {"architecture": "topk"}
    assert sorted(r.sae_id for r in list_saes(db)) == ["a", "b"]
    with pytest.raises(NotFoundError, match="no SAE named 'c'; known: a, b"):
        get_sae(db, "c")
    set_sae_metrics(db, "a", {"fve": 0.9, "loss_recovered": None})
    assert get_sae(db, "a").metrics == {"fve": 0.9, "loss_recovered": None}
    with pytest.raises(NotFoundError):
        set_sae_metrics(db, "zz", {})


def test_replacing_an_sae_with_other_weights_drops_what_described_the_old_ones(tmp_path):
    """`--force` with new weights must not leave old labels presented as the new SAE's."""
    from sae.model import install_and_record
    from storage.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.init()
    install_and_record(ws, "s1", create_sae("topk", 8, 16, k=2), source="trained")
    with ws.db() as db:
        db.table("sae_features").insert({"sae_id": "s1", "feature": 0, "max_activation": 1.0})
        label_id = db.table("labels").insert({"sae_id": "s1", "feature": 0, "status": "ok",
                                              "label": "old", "description": "old weights"}).last_pk
        db.table("predictions").insert({"label_id": label_id, "accession": "P1", "predicted": 1.0})
    first = load_sae(ws.sae_dir("s1"))
    install_and_record(ws, "s1", first, source="trained")  # the same weights again: labels stay
    with ws.db() as db:
        assert db.table("labels").count == 1
    record = install_and_record(ws, "s1", create_sae("topk", 8, 16, k=2), source="trained")
    with ws.db() as db:
        assert record.weights_hash == db.query("select weights_hash from saes")[0]["weights_hash"]
        for table in ("labels", "predictions", "sae_features"):
            assert db.table(table).count == 0, table
        assert db.query("select count(*) as n from labels_fts where labels_fts match 'old'")[0]["n"] == 0
