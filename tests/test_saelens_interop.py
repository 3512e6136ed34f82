"""SAELens interop against the real sae-lens package (the `interop` extra): both directions, every
architecture of our registry, through SAELens's own loader (`SAE.load_from_disk`) and savers
(`save_model`, `save_inference_model`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import sae_lens
import torch
from sae_lens import SAE as LensSAE
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.registry import get_sae_class, get_sae_training_class

from sae.importers import import_sae
from sae.model import CFG_FILENAME, REGISTRY, WEIGHTS_FILENAME, create_sae, load_sae, save_sae
from sae.saelens_layout import SAELENS_VERSION, saelens_keys
from storage.errors import InputError

D_IN, D_SAE = 24, 64
TOL = 1e-4
NORMALIZATIONS = ["none", "scale", "layer_norm", "unit_norm"]
THEIR_NORMALIZATIONS = ["none", "expected_average_only_in", "layer_norm", "constant_norm_rescale"]
ROOT = Path(__file__).resolve().parents[1]
# max abs differences measured (printed with -s; quoted in the README)
MEASURED: dict[str, float] = {}
# Our architectures SAELens has an inference class for (topk_rescaled, InterPLM's normalised TopK, has
# none: test_what_saelens_cannot_compute_it_refuses checks that SAELens's loader refuses it).
EXPORTABLE = [key for key, (_, model_class) in REGISTRY.items()
              if not model_class.saelens_architecture.startswith("plmlabel_")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(seed: int = 0, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 3 + 0.5


def _diff(name: str, a: torch.Tensor, b: torch.Tensor) -> float:
    value = float((a.float() - b.float()).abs().max())
    MEASURED[name] = max(value, MEASURED.get(name, 0.0))
    print(f"{name}: max abs diff {value:.2e}")
    return value


def _ours(arch: str, normalization: str = "none", seed: int = 0):
    """One of ours with non-trivial weights: decoder rows not of unit norm, biases, thresholds."""
    torch.manual_seed(seed)
    kwargs = {"k": 6} if arch in ("topk", "batchtopk") else {}
    if normalization == "scale":
        kwargs["norm_scale"] = 0.37
    sae = create_sae(arch, D_IN, D_SAE, normalization=normalization, plm_model="esm2_t6_8M_UR50D", layer=3,
                     **kwargs)
    with torch.no_grad():
        for name, tensor in sae.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * (0.3 if name.startswith("W") else 0.1))
        if arch == "batchtopk":
            sae.threshold.fill_(0.08)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.rand(D_SAE) * 0.2 + 0.01).log_()
    return sae.eval()


def _theirs_out(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        feats = model.encode(x)
        return feats, model.decode(feats)


def _ours_out(sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = sae(x)
        return out.feats, out.recon


def _assert_same(label: str, ours, theirs) -> None:
    feats_diff = _diff(f"{label} features", ours[0], theirs[0])
    recon_diff = _diff(f"{label} reconstructions", ours[1], theirs[1])
    assert (ours[0] > 0).any(), "no feature fired: the comparison would prove nothing"
    assert feats_diff <= TOL and recon_diff <= TOL


def test_the_pinned_sae_lens_is_the_layout_we_write():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["interop"]
    assert f"sae-lens=={sae_lens.__version__}" in extra
    assert sae_lens.__version__ == SAELENS_VERSION


# --- ours -> SAELens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("arch", EXPORTABLE)
def test_what_we_save_loads_in_saelens_with_our_numbers(tmp_path, arch, normalization):
    sae = _ours(arch, normalization)
    save_sae(sae, tmp_path / "s")
    theirs = LensSAE.load_from_disk(tmp_path / "s")
    assert type(theirs) is get_sae_class(sae.saelens_architecture)[0]
    x = _x()
    _assert_same(f"ours->SAELens {arch}", _ours_out(sae, x), _theirs_out(theirs, x))
    # and our own reload is the SAE we saved (the folded `scale` unfolded again)
    again = load_sae(tmp_path / "s")
    assert again.cfg == sae.cfg
    for name, tensor in sae.weights_for_saving().items():
        assert torch.allclose(again.weights_for_saving()[name], tensor, rtol=1e-6, atol=1e-7), name


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_saelens_ignores_every_key_it_does_not_read(tmp_path, arch):
    sae = _ours(arch, "scale")
    save_sae(sae, tmp_path / "full")
    cfg = json.loads((tmp_path / "full" / CFG_FILENAME).read_text())
    ours_only = set(cfg) - set(saelens_keys(sae))
    assert {"plmlabel_architecture", "normalization", "norm_scale", "format_version"} <= ours_only
    their_fields = {f.name for f in dataclasses.fields(get_sae_class(sae.saelens_architecture)[1])}
    their_fields |= {f.name for f in dataclasses.fields(get_sae_training_class(sae.saelens_architecture)[1])}
    assert not ours_only & their_fields, "a key of ours would be read by SAELens"
    shutil.copytree(tmp_path / "full", tmp_path / "bare")
    bare = {key: value for key, value in cfg.items() if key not in ours_only}
    (tmp_path / "bare" / CFG_FILENAME).write_text(json.dumps(bare))
    full, stripped = LensSAE.load_from_disk(tmp_path / "full"), LensSAE.load_from_disk(tmp_path / "bare")
    assert full.cfg.to_dict() == stripped.cfg.to_dict()
    x = _x(1)
    for a, b in zip(_theirs_out(full, x), _theirs_out(stripped, x), strict=True):
        assert torch.equal(a, b)


# --- SAELens -> ours -----------------------------------------------------------------------------------


def _randomize(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.dim() > 0:
                scale = 0.3 if name.startswith("W") else 0.1
                tensor.copy_(torch.randn(tensor.shape, generator=g, dtype=tensor.dtype) * scale)
        if hasattr(model, "threshold"):
            model.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.2 + 0.01)


@pytest.mark.parametrize("normalization", THEIR_NORMALIZATIONS)
@pytest.mark.parametrize("arch", EXPORTABLE)
def test_saelens_inference_saes_import_exactly(tmp_path, arch, normalization):
    """For each of our architectures, SAELens's inference class for it, saved by SAELens, imports."""
    their_arch = REGISTRY[arch][1].saelens_architecture
    cfg = {"architecture": their_arch, "d_in": D_IN, "d_sae": D_SAE, "normalize_activations": normalization}
    if their_arch == "topk":
        cfg.update(k=6, rescale_acts_by_decoder_norm=True)
    theirs = LensSAE.from_dict(cfg)
    _randomize(theirs, seed=7)
    theirs.save_model(tmp_path / "lens")
    ours = import_sae(tmp_path / "lens", "saelens")
    x = _x(2)
    _assert_same(f"SAELens->ours {their_arch}", _ours_out(ours, x), _theirs_out(theirs, x))


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_saelens_saes_without_b_dec_on_the_input_import_exactly(tmp_path, arch):
    """apply_b_dec_to_input=false: folded into each encoder bias (b_enc; b_gate and b_mag for gated)."""
    their_arch = REGISTRY[arch][1].saelens_architecture
    cfg = {"architecture": their_arch, "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": False}
    if their_arch == "topk":
        cfg["k"] = 6
    theirs = LensSAE.from_dict(cfg)
    _randomize(theirs, seed=9)
    theirs.save_model(tmp_path / "lens")
    ours = import_sae(tmp_path / "lens", "saelens")
    x = _x(6)
    _assert_same(f"SAELens(no b_dec in)->ours {their_arch}", _ours_out(ours, x), _theirs_out(theirs, x))


TRAINING = {
    "topk": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": 6}),
    "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {"k": 6}),
    "matryoshka_batchtopk": (MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig,
                             {"k": 6, "matryoshka_widths": [16, 40, D_SAE]}),
}


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("kind", list(TRAINING))
def test_saelens_training_checkpoints_import_as_saelens_would_run_them(tmp_path, kind, rescale):
    """Training checkpoints (save_model), decoder norms not 1: equal to SAELens's own inference form."""
    model_class, cfg_class, extra = TRAINING[kind]
    theirs = model_class(cfg_class(d_in=D_IN, d_sae=D_SAE, rescale_acts_by_decoder_norm=rescale, **extra))
    _randomize(theirs, seed=11)
    if hasattr(theirs, "topk_threshold"):
        theirs.topk_threshold = torch.tensor(0.05, dtype=torch.double)
    theirs.save_model(tmp_path / "ckpt")
    ours = import_sae(tmp_path / "ckpt", "saelens")
    assert ours.architecture == ("topk" if kind == "topk" else "batchtopk")
    x = _x(3)
    if kind == "topk":  # a per-token top-k: SAELens's own training class runs it as is
        reference = TrainingSAE.load_from_disk(tmp_path / "ckpt")
    else:  # batch-dependent in training: SAELens's inference form is a JumpReLU with the threshold
        theirs.save_inference_model(tmp_path / "inference")
        reference = LensSAE.load_from_disk(tmp_path / "inference")
        assert reference.cfg.architecture() == "jumprelu"
    _assert_same(f"SAELens training->ours {kind}", _ours_out(ours, x), _theirs_out(reference, x))
    if kind == "matryoshka_batchtopk":
        assert ours.cfg.source["matryoshka_widths"] == [16, 40, D_SAE]


PER_TOKEN_TRAINING = {
    "standard": (StandardTrainingSAE, StandardTrainingSAEConfig, "relu"),
    "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, "jumprelu"),
    "gated": (GatedTrainingSAE, GatedTrainingSAEConfig, "gated"),
}


@pytest.mark.parametrize("kind", list(PER_TOKEN_TRAINING))
def test_other_saelens_training_checkpoints_import_exactly(tmp_path, kind):
    model_class, cfg_class, ours_arch = PER_TOKEN_TRAINING[kind]
    theirs = model_class(cfg_class(d_in=D_IN, d_sae=D_SAE))
    _randomize(theirs, seed=13)
    theirs.save_model(tmp_path / "ckpt")
    ours = import_sae(tmp_path / "ckpt", "saelens")
    assert ours.architecture == ours_arch
    reference = TrainingSAE.load_from_disk(tmp_path / "ckpt")
    _assert_same(f"SAELens training->ours {kind}", _ours_out(ours, _x(8)), _theirs_out(reference, _x(8)))


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_ours_through_saelens_and_back_is_unchanged(tmp_path, arch):
    """save_sae -> SAELens load_from_disk -> SAELens save_model -> sae import: the same numbers."""
    sae = _ours(arch, "scale")
    save_sae(sae, tmp_path / "ours")
    LensSAE.load_from_disk(tmp_path / "ours").save_model(tmp_path / "lens")
    back = import_sae(tmp_path / "lens", "saelens")
    x = _x(4)
    _assert_same(f"ours->SAELens->ours {arch}", _ours_out(back, x), _ours_out(sae, x))


def test_what_saelens_cannot_compute_it_refuses(tmp_path):
    """InterPLM's normalised TopK (top-k choice, then a per-feature scale): SAELens raises, no numbers."""
    for key, (_, model_class) in REGISTRY.items():
        if key in EXPORTABLE:
            continue
        sae = create_sae(key, D_IN, D_SAE, k=6)
        save_sae(sae, tmp_path / key)
        with pytest.raises(Exception, match=model_class.saelens_architecture):
            LensSAE.load_from_disk(tmp_path / key)
        assert torch.equal(load_sae(tmp_path / key).encode(_x()), sae.encode(_x()))


# --- what is refused --------------------------------------------------------------------------------


def _lens_folder(tmp_path, cfg_changes=None, tensor_changes=None, arch="standard") -> Path:
    theirs = LensSAE.from_dict({"architecture": arch, "d_in": D_IN, "d_sae": D_SAE})
    _randomize(theirs, seed=5)
    folder = tmp_path / "lens"
    theirs.save_model(folder)
    if cfg_changes:
        cfg = json.loads((folder / CFG_FILENAME).read_text())
        cfg.update(cfg_changes)
        (folder / CFG_FILENAME).write_text(json.dumps(cfg))
    if tensor_changes:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / WEIGHTS_FILENAME))
        for name, value in tensor_changes.items():
            if value is None:
                del tensors[name]
            else:
                tensors[name] = value
        save_file(tensors, str(folder / WEIGHTS_FILENAME))
    return folder


REFUSED = {
    "abstopk": ({"k": 4}, None, "abstopk", "SAELens architecture 'abstopk' is not supported"),
    "unknown architecture": ({"architecture": "mystery"}, None, "standard", "architecture 'mystery'"),
    "unknown activation": ({"activation_fn": "tanh-relu"}, None, "standard", "activation_fn 'tanh-relu'"),
    "hook_z": ({"reshape_activations": "hook_z"}, None, "standard", "reshape_activations 'hook_z'"),
    "whitening": ({"normalize_activations": "covariance_whitening"}, None, "standard",
                  "normalize_activations 'covariance_whitening'"),
    "fractional k": ({"k": 6.5}, None, "topk", "k 6.5 is not a whole number"),
    "missing tensor": ({}, {"b_enc": None}, "standard", "no tensor b_enc"),
    "wrong shape": ({}, {"b_dec": torch.zeros(D_IN + 1)}, "standard", f"b_dec has shape ({D_IN + 1},)"),
    "NaN weights": ({}, {"W_dec": torch.full((D_SAE, D_IN), float("nan"))}, "standard",
                    "W_dec contains NaN"),
    "extra tensor": ({}, {"b_gate": torch.zeros(D_SAE)}, "standard", "tensor b_gate is not part of"),
    "bad d_sae": ({"d_sae": "64"}, None, "standard", "d_sae '64' is not a positive whole number"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_we_cannot_reproduce_is_refused_in_one_line(tmp_path, case, cli, workspace):
    cfg_changes, tensor_changes, arch, message = REFUSED[case]
    folder = _lens_folder(tmp_path, cfg_changes, tensor_changes, arch=arch)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_sae(folder, "saelens")
    result = cli("sae", "import", folder, "--format", "saelens", "--name", "x", "--workspace", workspace.root)
    assert result.exit_code == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in line and str(folder) in line
    assert not workspace.sae_dir("x").exists()
    assert cli("sae", "list", "--workspace", workspace.root, "--json").json() == []


def test_a_saelens_folder_given_to_load_sae_says_to_import_it(tmp_path):
    folder = _lens_folder(tmp_path)
    with pytest.raises(InputError, match="not saved by plmlabel .* `plmlabel sae import --format saelens`"):
        load_sae(folder)


# --- what the CLI writes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_what_sae_train_and_sae_import_store_loads_in_saelens(tmp_path):
    """`plmlabel sae train` (each architecture, `scale` normalisation as it trains) and `sae import`:
    the stored folder loads in SAELens and gives plmlabel's features and reconstructions."""
    from sae.embed import embed_proteins
    from storage.workspace import Workspace
    from tests.conftest import SHARED_SWISSPROT, invoke
    from tests.esm_fixtures import insert_proteins, read_sprot_sequences, tiny_checkpoint

    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    ws = Workspace(tmp_path / "ws")
    ws.init()
    checkpoint = tiny_checkpoint(tmp_path)
    insert_proteins(ws, read_sprot_sequences(SHARED_SWISSPROT / "sprot_sample.dat.gz", limit=12))
    embed_proteins(ws, str(checkpoint), 1, None, 4096, "cpu", "auto")
    base = ("--workspace", ws.root, "--model", checkpoint, "--layer", 1)
    x = _x(5)[:, :1].repeat(1, 32) + torch.randn(40, 32)  # width 32: the tiny ESM-2
    for arch in (key for key in EXPORTABLE if REGISTRY[key][1].trainable):
        k = ("--k", 4) if arch in ("topk", "batchtopk") else ()
        trained = invoke("sae", "train", *base, "--name", arch, "--arch", arch, "--d-sae", 64, *k,
                         "--tokens", 4096, "--batch-size", 512, "--device", "cpu")
        assert trained.exit_code == 0, trained.stderr
        ours = load_sae(ws.sae_dir(arch))
        assert ours.cfg.normalization == "scale" and ours.cfg.norm_scale != 1
        theirs = LensSAE.load_from_disk(ws.sae_dir(arch))
        _assert_same(f"sae train->SAELens {arch}", _ours_out(ours, x), _theirs_out(theirs, x))
    lens = LensSAE.from_dict({"architecture": "topk", "d_in": 32, "d_sae": 64, "k": 5,
                              "rescale_acts_by_decoder_norm": True})
    _randomize(lens, seed=3)
    lens.save_model(tmp_path / "lens")
    imported = invoke("sae", "import", tmp_path / "lens", "--format", "saelens", "--name", "imp", *base)
    assert imported.exit_code == 0, imported.stderr
    again = LensSAE.load_from_disk(ws.sae_dir("imp"))
    _assert_same("sae import->SAELens topk", _theirs_out(again, x), _theirs_out(lens, x))
    _assert_same("sae import->ours topk", _ours_out(load_sae(ws.sae_dir("imp")), x), _theirs_out(lens, x))
