"""Every SAE class InterPLM trains, saved as they save it, imports with their features and reconstructions.

The InterPLM side is tests/interplm_reference.py (their classes and math, rebuilt from their source).
"""

from __future__ import annotations

import pytest
import torch

from sae.import_interplm import trainer_in_config
from sae.importers import import_sae
from sae.model import load_sae
from storage.errors import InputError, NotFoundError
from tests import interplm_reference as ref

D_IN, D_SAE, K = 24, 64, 8
DEAD = [1, 5, 9]
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(seed: int = 5) -> torch.Tensor:
    return torch.randn(4, 13, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


CLASSES = {
    "relu": (lambda sqrt_d: ref.ReLUSAE(D_IN, D_SAE, sqrt_d), "relu"),
    "tied": (lambda sqrt_d: ref.ReLUSAETied(D_IN, D_SAE, sqrt_d), "relu"),
    "jumprelu": (lambda sqrt_d: ref.JumpReLUSAE(D_IN, D_SAE, sqrt_d), "jumprelu"),
    "jumprelu_v1": (lambda sqrt_d: ref.JumpReLUSAEv1(D_IN, D_SAE, sqrt_d), "jumprelu"),
    "topk": (lambda sqrt_d: ref.TopKSAE(D_IN, D_SAE, K, sqrt_d), "topk"),
    "batchtopk": (lambda sqrt_d: ref.BatchTopKSAE(D_IN, D_SAE, K, sqrt_d), "batchtopk"),
}


def config_yaml(trainer: str, tagged: bool = False) -> str:
    """Their config.yaml (TrainingRunConfig.save_configs_as_yaml: asdict, or the tagged form of their
    migration configs), trainer_cfg as TopKTrainerConfig / BatchTopKTrainerConfig / ReLUTrainerConfig."""
    fields = {
        "topk": ["k: 8", "auxk_alpha: 0.03125", "threshold_beta: 0.999", "threshold_start_step: 1000",
                 "trainer_name: TopKTrainer"],
        "batchtopk": ["k: 8", "auxk_alpha: 0.03125", "threshold_beta: 0.999", "threshold_start_step: 1000",
                      "dead_feature_threshold: 10000000"],
        "relu": ["l1_penalty: 0.06", "l1_penalty_warmup_steps: 100"],
    }[trainer]
    tag = {"topk": "top_k.TopKTrainerConfig", "batchtopk": "batch_top_k.BatchTopKTrainerConfig",
           "relu": "relu.ReLUTrainerConfig"}[trainer]
    head = f"trainer_cfg: !!python/object:interplm.train.trainers.{tag}" if tagged else "trainer_cfg:"
    common = ["expansion_factor: 8", f"dictionary_size: {D_SAE}", "lr: 0.0002", f"activation_dim: {D_IN}",
              "normalize_to_sqrt_d: false", "grad_clip_norm: 1.0"]
    lines = ["dataloader_cfg:", "  plm_embd_dir: embeddings/esm2_8m/layer_3", "  batch_size: 512", head,
             *(f"  {line}" for line in common + fields), "eval_cfg:", "  eval_steps: 100",
             "checkpoint_cfg:", "  save_dir: models/run", "  save_steps: 50"]
    return "\n".join(lines) + "\n"


def _build(cls: str, variant: str, seed: int = 3):
    sqrt_d = variant == "sqrt_d_normalized"
    sae = ref.randomise(CLASSES[cls][0](sqrt_d), seed)
    if variant != "ae":
        ref.kill(sae, DEAD)
        factor = ref.normalise(sae, _x())
        assert (factor[DEAD] == 0).all() and (factor > 0).sum() > D_SAE // 2
    return sae


def _save(sae, folder, name: str, cls: str):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sae.state_dict(), folder / name)
    if cls in ("topk", "batchtopk"):
        (folder / "config.yaml").write_text(config_yaml(cls))
    return folder / name


def max_abs_diffs(sae_ours, theirs, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = sae_ours(x)
    features, recon = theirs.features(x), theirs.recon(x)
    assert out.feats.shape == features.shape and out.recon.shape == recon.shape
    return float((out.feats - features).abs().max()), float((out.recon - recon).abs().max())


@pytest.mark.parametrize("variant", ["ae", "normalized", "sqrt_d_normalized"])
@pytest.mark.parametrize("cls", list(CLASSES))
def test_each_class_imports_with_their_features_and_reconstructions(tmp_path, cls, variant):
    theirs = _build(cls, variant)
    name = "ae.pt" if variant == "ae" else "ae_normalized.pt"
    path = _save(theirs, tmp_path / "run", name, cls)
    ours = import_sae(path, "interplm", plm_model="m", layer=3)
    feature_diff, recon_diff = max_abs_diffs(ours, theirs, _x())
    assert feature_diff <= TOLERANCE and recon_diff <= TOLERANCE, (feature_diff, recon_diff)
    expected = CLASSES[cls][1]
    if variant != "ae" and expected == "topk":
        expected = "topk_rescaled"  # the top-k choice precedes their division: a per-feature scale after it
    assert ours.cfg.architecture == expected
    assert ours.cfg.normalization == ("unit_norm" if variant == "sqrt_d_normalized" else "none")
    dead = 0 if variant == "ae" else int((theirs.activation_rescale_factor == 0).sum())
    assert ours.cfg.source["dead_features"] == dead
    if variant != "ae":
        feats = ours.encode(_x(9) * 3)  # other inputs: the dead features stay silent
        assert (feats[..., DEAD] == 0).all() and feats.max() > 0
        assert (feats.amax(dim=(0, 1)) > 0).sum() > 10
    if expected in ("topk", "topk_rescaled", "batchtopk"):
        assert ours.cfg.k == K


def test_a_normalised_topk_survives_our_save_and_load(tmp_path):
    theirs = _build("topk", "normalized")
    ours = import_sae(_save(theirs, tmp_path / "run", "ae_normalized.pt", "topk"), "interplm")
    from sae.model import save_sae

    save_sae(ours, tmp_path / "ours")
    again = load_sae(tmp_path / "ours")
    assert torch.equal(again.encode(_x()), ours.encode(_x()))
    assert max(max_abs_diffs(again, theirs, _x())) <= TOLERANCE


def test_the_first_releases_folded_normalisation_with_dead_features(tmp_path):
    """The first release divided the encoder by each feature's max: a dead feature's row became inf/NaN."""
    theirs = ref.randomise(ref.ReLUSAE(D_IN, D_SAE, first_release=True), 4)
    ref.kill(theirs, DEAD)
    x = _x()
    with torch.no_grad():
        raw, recon = theirs.encode_raw(x), theirs.recon(x)
    maxima = ref.first_release_normalise(theirs, x)
    state = theirs.state_dict()
    assert set(state) == {"bias", "encoder.weight", "encoder.bias", "decoder.weight"}
    assert not torch.isfinite(state["encoder.weight"][DEAD]).all()
    torch.save(state, tmp_path / "ae_normalized.pt")
    ours = import_sae(tmp_path / "ae_normalized.pt", "interplm")
    expected = torch.where(maxima > 0, raw / maxima, torch.zeros_like(raw))
    out = ours(x)
    assert float((out.feats - expected).abs().max()) <= TOLERANCE
    assert float((out.recon - recon).abs().max()) <= TOLERANCE
    assert ours.cfg.source["dead_features"] == int((maxima == 0).sum()) >= len(DEAD)


# --- telling TopK from BatchTopK --------------------------------------------------------------------


@pytest.mark.parametrize("tagged", [False, True])
@pytest.mark.parametrize("trainer", ["topk", "batchtopk", "relu"])
def test_their_config_yaml_names_the_trainer(trainer, tagged):
    assert trainer_in_config(config_yaml(trainer, tagged)) == trainer


def test_topk_without_its_config_is_refused_with_the_reason(tmp_path):
    theirs = _build("topk", "ae")
    (tmp_path / "run").mkdir()
    torch.save(theirs.state_dict(), tmp_path / "run" / "ae.pt")
    with pytest.raises(InputError, match="TopK or BatchTopK SAE .*no config.yaml of its training run"):
        import_sae(tmp_path / "run", "interplm")
    (tmp_path / "run" / "config.yaml").write_text(config_yaml("relu"))
    with pytest.raises(InputError, match="says a relu SAE, but ae.pt holds a TopK/BatchTopK state dict"):
        import_sae(tmp_path / "run", "interplm")


def test_a_training_checkpoint_reads_the_config_of_its_run(tmp_path):
    """Their trainer writes run/checkpoints/step_N/checkpoint.pt; config.yaml lies in run/."""
    theirs = _build("batchtopk", "ae")
    step = tmp_path / "run" / "checkpoints" / "step_50"
    step.mkdir(parents=True)
    torch.save(theirs.state_dict(), step / "checkpoint.pt")
    (tmp_path / "run" / "config.yaml").write_text(config_yaml("batchtopk", tagged=True))
    ours = import_sae(step, "interplm")
    assert ours.cfg.architecture == "batchtopk"
    assert max(max_abs_diffs(ours, theirs, _x())) <= TOLERANCE


# --- refused files ------------------------------------------------------------------------------------


def _state(cls: str = "relu") -> dict:
    return _build(cls, "normalized").state_dict()


def test_refusals_name_the_file_and_the_problem(tmp_path):
    cases = []
    state = _state("jumprelu")
    del state["decoder.bias"]
    cases.append((state, "looks like InterPLM's JumpReLUSAE but has no tensor decoder.bias"))
    state = _state("jumprelu")
    state["threshold"] = state["threshold"][:10]
    cases.append((state, r"threshold has shape \(10,\), expected \(64,\)"))
    state = _state()
    state["decoder.weight"][3, 4] = float("nan")
    cases.append((state, "decoder.weight contains NaN or infinite values"))
    state = _state()
    state["activation_rescale_factor"][2] = -1.0
    cases.append((state, "activation_rescale_factor has negative values"))
    state = _state()
    state["activation_rescale_factor"] = state["activation_rescale_factor"][:5]
    cases.append((state, r"activation_rescale_factor has shape \(5,\), expected \(64,\)"))
    state = _state("relu")
    state["encoder.weight"][7, 0] = float("inf")  # non-finite but its decoder column is not zero
    cases.append((state, "encoder.weight or encoder.bias contains NaN or infinite values"))
    cases.append(({"W_enc": torch.zeros(2)},
                  r"JumpReLUSAE \(v1.0.0\) but has no tensor b_enc, W_dec, b_dec, threshold"))
    cases.append(({"w_enc": torch.zeros(2, 3)}, "not an InterPLM SAE state dict: no encoder.weight"))
    for number, (state, message) in enumerate(cases):
        path = tmp_path / f"case{number}.pt"
        torch.save(state, path)
        with pytest.raises(InputError, match=message) as caught:
            import_sae(path, "interplm")
        assert str(path) in str(caught.value)
    state = _state("topk")
    state["k"] = torch.tensor(D_SAE + 1, dtype=torch.int)
    (tmp_path / "k").mkdir()
    torch.save(state, tmp_path / "k" / "ae.pt")
    with pytest.raises(InputError, match="k must be one whole number between 1 and d_sae=64"):
        import_sae(tmp_path / "k" / "ae.pt", "interplm")
    with pytest.raises(NotFoundError, match="holds none of ae_normalized.pt"):
        import_sae(tmp_path, "interplm")


def test_cli_imports_a_normalised_topk_and_refuses_a_broken_file(workspace, cli, tmp_path):
    theirs = _build("topk", "normalized")
    path = _save(theirs, tmp_path / "run", "ae_normalized.pt", "topk")
    model = str(tmp_path / "my_esm.pt")
    base = ("--workspace", workspace.root, "--model", model, "--layer", 1)
    result = cli("sae", "import", path, "--format", "interplm", "--name", "tk", *base, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["architecture"] == "topk_rescaled" and result.json()["k"] == K
    loaded = load_sae(workspace.sae_dir("tk"))
    assert max(max_abs_diffs(loaded, theirs, _x())) <= TOLERANCE

    state = theirs.state_dict()
    del state["b_dec"], state["k"]
    torch.save(state, tmp_path / "broken.pt")
    broken = cli("sae", "import", tmp_path / "broken.pt", "--format", "interplm", "--name", "b", *base)
    assert broken.exit_code == 2
    (line,) = [line for line in broken.stderr.splitlines() if line.strip()]
    assert str(tmp_path / "broken.pt") in line and "TopKSAE/BatchTopKSAE but has no tensor b_dec, k" in line
    assert not workspace.sae_dir("b").exists()
    assert [r["sae_id"] for r in cli("sae", "list", "--workspace", workspace.root, "--json").json()] == ["tk"]
