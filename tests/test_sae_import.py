"""Importing InterPLM, InterProt and SAELens SAEs: each file is built in its upstream layout with random
weights, and our encode/decode must equal a direct implementation of that upstream's math."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from sae.importers import import_into_workspace, import_sae
from sae.model import load_sae
from storage.errors import InputError, NotFoundError

D_IN, D_SAE = 24, 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 11, D_IN, generator=g) * 2 + 0.5


def _rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# --- InterPLM ------------------------------------------------------------------------------------------


def _interplm_state(rescale: torch.Tensor | None = None, sqrt_d: bool | None = None) -> dict:
    state = {
        "bias": _rand(D_IN, seed=1),
        "encoder.weight": _rand(D_SAE, D_IN, seed=2, scale=0.3),
        "encoder.bias": _rand(D_SAE, seed=3, scale=0.2),
        "decoder.weight": _rand(D_IN, D_SAE, seed=4, scale=0.3),
    }
    if rescale is not None:
        state["activation_rescale_factor"] = rescale
    if sqrt_d is not None:
        state["normalize_to_sqrt_d"] = torch.tensor(sqrt_d)
    return state


def interplm_reference(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InterPLM's ReLU SAE: features normalised by activation_rescale_factor, reconstruction un-normalised."""
    norms = None
    if state.get("normalize_to_sqrt_d", torch.tensor(False)).item():
        norms = x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        x = torch.nn.functional.normalize(x, dim=-1) * math.sqrt(D_IN)
    raw = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    recon = raw @ state["decoder.weight"].T + state["bias"]
    if norms is not None:
        recon = recon * norms / math.sqrt(D_IN)
    features = raw / state.get("activation_rescale_factor", torch.ones(D_SAE))
    return features, recon


@pytest.mark.parametrize("variant", ["ae_normalized", "rescale_factor_and_sqrt_d"])
def test_interplm_matches_its_math(tmp_path, variant):
    if variant == "ae_normalized":
        state = _interplm_state()
    else:
        state = _interplm_state(rescale=_rand(D_SAE, seed=9).abs() + 0.5, sqrt_d=True)
    torch.save(state, tmp_path / "ae_normalized.pt")
    sae = import_sae(tmp_path, "interplm", plm_model="m", layer=3)  # a folder holding the file works too
    x = _x()
    features, recon = interplm_reference(state, x)
    _close(sae.encode(x), features)
    _close(sae(x).recon, recon)
    assert sae.cfg.architecture == "relu" and sae.cfg.source["format"] == "interplm"
    assert sae.cfg.normalization == ("unit_norm" if variant != "ae_normalized" else "none")


def test_interplm_incomplete_and_broken_files_are_refused(tmp_path):
    state = _interplm_state()
    state["b_dec"] = state.pop("bias")
    state["k"] = torch.tensor(8)
    torch.save(state, tmp_path / "topk.pt")
    with pytest.raises(InputError, match="InterPLM's TopKSAE/BatchTopKSAE but has no tensor threshold"):
        import_sae(tmp_path / "topk.pt", "interplm")
    state = _interplm_state()
    state["decoder.weight"] = state["decoder.weight"][:, :10]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"decoder.weight has shape \(24, 10\)"):
        import_sae(tmp_path / "bad.pt", "interplm")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable torch state dict"):
        import_sae(tmp_path / "junk.pt", "interplm")
    with pytest.raises(NotFoundError):
        import_sae(tmp_path / "absent.pt", "interplm")


# --- InterProt ----------------------------------------------------------------------------------------


def _interprot_state() -> dict:
    return {
        "w_enc": _rand(D_IN, D_SAE, seed=11, scale=0.3),
        "w_dec": _rand(D_SAE, D_IN, seed=12, scale=0.3),
        "b_enc": _rand(D_SAE, seed=13, scale=0.2),
        "b_pre": _rand(D_IN, seed=14, scale=0.2),
        "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
    }


def interprot_reference(state: dict, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """InterProt's SparseAutoencoder: per-token LN, top-k (ReLU on the kept values), un-normalised recon."""
    mu = x.mean(dim=-1, keepdim=True)
    centred = x - mu
    std = centred.std(dim=-1, keepdim=True)
    normed = centred / (std + 1e-5)
    pre = (normed - state["b_pre"]) @ state["w_enc"] + state["b_enc"]
    top = torch.topk(pre, k=k, dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    recon = (latents @ state["w_dec"] + state["b_pre"]) * std + mu
    return latents, recon


def test_interprot_safetensors_matches_its_math(tmp_path):
    state = _interprot_state()
    path = tmp_path / f"esm2_plm{D_IN}_l3_sae{D_SAE}_k8_auxk16.safetensors"
    save_file(state, str(path))
    sae = import_sae(path, "interprot", plm_model="m", layer=3)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 8 and sae.cfg.normalization == "layer_norm"
    x = _x()
    latents, recon = interprot_reference(state, x, 8)
    _close(sae.encode(x), latents)
    _close(sae(x).recon, recon)


def test_interprot_lightning_checkpoint_with_prefix_and_explicit_k(tmp_path):
    state = _interprot_state()
    torch.save({"state_dict": {f"sae_model.{key}": value for key, value in state.items()}},
               tmp_path / "esm2_plm24_l3_sae64_100Kseqs.pt")
    with pytest.raises(InputError, match="does not say k"):
        import_sae(tmp_path / "esm2_plm24_l3_sae64_100Kseqs.pt", "interprot")
    sae = import_sae(tmp_path / "esm2_plm24_l3_sae64_100Kseqs.pt", "interprot", k=5)
    latents, recon = interprot_reference(state, _x(), 5)
    _close(sae.encode(_x()), latents)
    _close(sae(_x()).recon, recon)


def test_interprot_missing_tensor_is_named(tmp_path):
    state = _interprot_state()
    del state["b_pre"]
    save_file(state, str(tmp_path / "x_k4.safetensors"))
    with pytest.raises(InputError, match="not in InterProt's layout: no tensor b_pre"):
        import_sae(tmp_path / "x_k4.safetensors", "interprot")


# --- SAELens ----------------------------------------------------------------------------------------------


def _saelens_folder(folder, cfg: dict, tensors: dict) -> None:
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", **cfg}))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


def _saelens_tensors(threshold: bool = False) -> dict:
    tensors = {
        "W_enc": _rand(D_IN, D_SAE, seed=21, scale=0.3),
        "W_dec": _rand(D_SAE, D_IN, seed=22, scale=0.3),
        "b_enc": _rand(D_SAE, seed=23, scale=0.2),
        "b_dec": _rand(D_IN, seed=24, scale=0.3),
    }
    if threshold:
        tensors["threshold"] = _rand(D_SAE, seed=25).abs() * 0.3
    return tensors


def saelens_reference(cfg: dict, t: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens: normalise, subtract b_dec if apply_b_dec_to_input, activation, decode, un-normalise."""
    normalize = cfg.get("normalize_activations", "none")
    mu = std = coeff = None
    if normalize == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
    elif normalize == "constant_norm_rescale":
        coeff = D_IN**0.5 / x.norm(dim=-1, keepdim=True)
        x = x * coeff
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    hidden = sae_in @ t["W_enc"] + t["b_enc"]
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "topk" or cfg.get("activation_fn_str") == "topk":
        top = torch.topk(hidden, k=k, dim=-1)
        acts = torch.zeros_like(hidden).scatter(-1, top.indices, torch.relu(top.values))
    elif arch == "jumprelu":
        acts = torch.relu(hidden) * (hidden > t["threshold"])
    else:
        acts = torch.relu(hidden)
    out = acts @ t["W_dec"] + t["b_dec"]
    if normalize == "layer_norm":
        out = out * std + mu
    elif normalize == "constant_norm_rescale":
        out = out / coeff
    return acts, out


SAELENS_CASES = {
    "standard_no_b_dec_in": {"architecture": "standard", "apply_b_dec_to_input": False},
    "standard": {"architecture": "standard", "normalize_activations": "expected_average_only_in"},
    "topk_unit_norm": {"architecture": "topk", "k": 6, "normalize_activations": "constant_norm_rescale"},
    "jumprelu_layer_norm": {"architecture": "jumprelu", "normalize_activations": "layer_norm"},
    "old_topk_cfg": {"architecture": "standard", "activation_fn_str": "topk",
                     "activation_fn_kwargs": {"k": 7}, "model_name": "gelu-1l", "hook_layer": 0},
}


@pytest.mark.parametrize("case", list(SAELENS_CASES))
def test_saelens_matches_its_math(tmp_path, case):
    cfg = SAELENS_CASES[case]
    tensors = _saelens_tensors(threshold=cfg["architecture"] == "jumprelu")
    _saelens_folder(tmp_path / "sae", cfg, tensors)
    sae = import_sae(tmp_path / "sae", "saelens", plm_model="m", layer=2)
    x = _x()
    acts, out = saelens_reference(cfg, tensors, x)
    _close(sae.encode(x), acts)
    _close(sae(x).recon, out)
    assert (sae.cfg.plm_model, sae.cfg.layer) == ("m", 2)  # ours, not the cfg's model_name/hook_layer


def test_saelens_unsupported_and_broken_folders(tmp_path):
    _saelens_folder(tmp_path / "abstopk", {"architecture": "abstopk"}, _saelens_tensors())
    with pytest.raises(InputError, match="'abstopk' is not supported"):
        import_sae(tmp_path / "abstopk", "saelens")
    _saelens_folder(tmp_path / "gated", {"architecture": "gated"}, _saelens_tensors())
    with pytest.raises(InputError, match="no tensor b_gate, b_mag, r_mag"):
        import_sae(tmp_path / "gated", "saelens")
    _saelens_folder(tmp_path / "nothr", {"architecture": "jumprelu"}, _saelens_tensors())
    with pytest.raises(InputError, match="no tensor threshold"):
        import_sae(tmp_path / "nothr", "saelens")
    tensors = _saelens_tensors()
    tensors["W_dec"] = tensors["W_dec"][:, :5].contiguous()
    _saelens_folder(tmp_path / "shape", {"architecture": "standard"}, tensors)
    with pytest.raises(InputError, match=r"W_dec has shape \(64, 5\), expected \(64, 24\)"):
        import_sae(tmp_path / "shape", "saelens")
    with pytest.raises(NotFoundError, match="no SAELens folder"):
        import_sae(tmp_path / "absent", "saelens")
    with pytest.raises(InputError, match="unknown SAE format"):
        import_sae(tmp_path / "shape", "hf")


# --- into a workspace ------------------------------------------------------------------------------------


def test_import_checks_the_model_width_and_layer(workspace, tmp_path):
    _saelens_folder(tmp_path / "sae", {"architecture": "standard"}, _saelens_tensors())
    with pytest.raises(InputError, match="d_in=24 but esm2_t6_8M_UR50D layer 4 has width 320"):
        import_into_workspace(workspace, tmp_path / "sae", "saelens", "s", model="esm2_t6_8M_UR50D", layer=4)
    with pytest.raises(InputError, match="layer 9 is out of range"):
        import_into_workspace(workspace, tmp_path / "sae", "saelens", "s", model="esm2_t6_8M_UR50D", layer=9)
    assert not workspace.sae_dir("s").exists()


def test_import_records_the_sae_and_loads_back(workspace, tmp_path):
    torch.save(_interplm_state(), tmp_path / "ae_normalized.pt")
    model = str(tmp_path / "my_esm.pt")  # a checkpoint path: its width is unknown without embeddings
    record = import_into_workspace(workspace, tmp_path / "ae_normalized.pt", "interplm", "plm1",
                                   model=model, layer=1)
    assert record.source == "imported:interplm" and record.plm_model == model
    assert record.path == "saes/plm1"  # relative to the workspace: a copied workspace reads its own
    loaded = load_sae(workspace.root / record.path)
    features, _ = interplm_reference(_interplm_state(), _x())
    _close(loaded.encode(_x()), features)
    with pytest.raises(InputError, match="already exists"):
        import_into_workspace(workspace, tmp_path / "ae_normalized.pt", "interplm", "plm1", model=model,
                              layer=1)
    with pytest.raises(InputError, match="not a usable SAE name"):
        import_into_workspace(workspace, tmp_path / "ae_normalized.pt", "interplm", "../x", model=model,
                              layer=1)
