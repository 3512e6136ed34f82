"""InterProt SAEs as they publish and train them import with their latents and reconstructions: safetensors
releases (k from a cited table when the name lacks it), state dicts and Lightning checkpoints, loaded with
weights_only and argparse.Namespace as the only extra global.

The InterProt side is tests/interprot_reference.py (their SparseAutoencoder and checkpoint layout).
"""

from __future__ import annotations

import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file

from sae.import_interprot import KNOWN_RELEASES
from sae.importers import import_sae
from sae.model import load_sae
from storage.errors import InputError
from tests import interprot_reference as ref

D_IN, D_SAE, K = 24, 64, 8
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(d_in: int = D_IN, seed: int = 5) -> torch.Tensor:
    return torch.randn(3, 17, d_in, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def max_abs_diffs(ours, theirs: ref.SparseAutoencoder, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = ours(x)
    feats, recon = theirs.get_acts(x), theirs.forward_val(x)
    return float((out.feats - feats).abs().max()), float((out.recon - recon).abs().max())


def _save_safetensors(sae: ref.SparseAutoencoder, path: pathlib.Path) -> pathlib.Path:
    save_file({name: t.contiguous() for name, t in sae.state_dict().items()}, str(path))
    return path


def test_a_safetensors_file_named_with_k(tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, K)
    path = _save_safetensors(theirs, tmp_path / f"esm2_plm{D_IN}_l3_sae{D_SAE}_k{K}_auxk256_.safetensors")
    ours = import_sae(path, "interprot")
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.normalization) == ("topk", K, "layer_norm")
    assert ours.cfg.source["k_from"] == "file name"
    assert max(max_abs_diffs(ours, theirs, _x())) <= TOLERANCE


def test_a_lightning_checkpoint_gives_k_from_its_hyper_parameters(tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, K)
    ckpt = ref.lightning_checkpoint(theirs, ref.training_args(D_IN, D_SAE, K, layer=3))
    path = tmp_path / "last.ckpt"  # ModelCheckpoint(save_last=True): no k in the name
    torch.save(ckpt, path)
    with pytest.raises(Exception, match="argparse.Namespace"):  # their file really needs the one global
        torch.load(path, weights_only=True)
    ours = import_sae(path, "interprot", plm_model="m", layer=3)
    assert ours.cfg.k == K and ours.cfg.source["k_from"] == "hyper_parameters"
    assert ours.cfg.source["hyper_parameters"]["layer_to_use"] == 3
    assert max(max_abs_diffs(ours, theirs, _x())) <= TOLERANCE
    assert import_sae(path, "interprot", k=K).cfg.k == K
    with pytest.raises(InputError, match="--k 16 contradicts last.ckpt, whose hyper-parameters say k=8"):
        import_sae(path, "interprot", k=16)
    named = tmp_path / f"esm2_plm{D_IN}_l3_sae{D_SAE}_k16_auxk256_-step=40-avg_mse_loss=0.41.ckpt"
    torch.save(ckpt, named)
    with pytest.raises(InputError, match="says k16 in its name but k=8 in its hyper-parameters"):
        import_sae(named, "interprot")


def test_a_plain_state_dict_with_the_prefix(tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, 5)
    torch.save(ref.SAELightningModule(theirs).state_dict(), tmp_path / "esm2_plm24_l3_sae64_100Kseqs.pt")
    ours = import_sae(tmp_path / "esm2_plm24_l3_sae64_100Kseqs.pt", "interprot", k=5)
    assert max(max_abs_diffs(ours, theirs, _x())) <= TOLERANCE


# --- published files without k in the name -----------------------------------------------------------


def test_a_published_release_imports_without_k(tmp_path):
    assert KNOWN_RELEASES["esm2_plm1280_l4_sae4096"].k == 64
    assert KNOWN_RELEASES["esm2_plm1280_l24_sae4096_100k"].k == 128
    theirs = ref.randomised(1280, 4096, 64)
    path = _save_safetensors(theirs, tmp_path / "esm2_plm1280_l4_sae4096.safetensors")
    ours = import_sae(path, "interprot")
    assert ours.cfg.k == 64 and ours.cfg.source["k_from"].startswith("published release (")
    assert "4096_layer_sweep/esm2_plm1280_l4_sae4096_k64_auxk640" in ours.cfg.source["k_from"]
    assert max(max_abs_diffs(ours, theirs, _x(1280)[:, :4])) <= TOLERANCE


def test_files_whose_k_is_unknown_say_which_k_are_plausible(tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, K)
    ambiguous = _save_safetensors(theirs, tmp_path / "esm2_plm1280_l24_sae4096.safetensors")
    with pytest.raises(InputError, match=r"whose k is not certain \(k=64: the layer-sweep run .*k=128: .*\); "
                                         "pass --k"):
        import_sae(ambiguous, "interprot")
    assert import_sae(ambiguous, "interprot", k=K).cfg.k == K
    unknown = _save_safetensors(theirs, tmp_path / "my_sae.safetensors")
    with pytest.raises(InputError, match=r"my_sae.safetensors does not say k .*pass --k: InterProt "
                                         r"trained k=16, 32, 64, 128, 256 \(64 for its layer sweep, 128 its"):
        import_sae(unknown, "interprot")
    # A release's name on other shapes is not that release.
    other = _save_safetensors(theirs, tmp_path / "esm2_plm1280_l8_sae4096.safetensors")
    with pytest.raises(InputError, match="does not say k"):
        import_sae(other, "interprot")


# --- what is refused ------------------------------------------------------------------------------------


class _Exploit:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickles_wanting_other_globals_are_refused_naming_the_global(workspace, cli, tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, K)
    args = ref.training_args(D_IN, D_SAE, K, layer=3)
    args.data_dir = pathlib.PurePosixPath("data/uniref50.parquet")  # a Path in the Namespace
    torch.save(ref.lightning_checkpoint(theirs, args), tmp_path / "path.ckpt")
    marker = tmp_path / "ran"
    ckpt = ref.lightning_checkpoint(theirs, ref.training_args(D_IN, D_SAE, K, layer=3))
    ckpt["callbacks"]["evil"] = _Exploit(marker)
    torch.save(ckpt, tmp_path / "evil.ckpt")
    base = ("--format", "interprot", "--workspace", workspace.root, "--model", tmp_path / "esm.pt",
            "--layer", 3)
    for name, global_name in (("path.ckpt", "pathlib.PurePosixPath"), ("evil.ckpt", "posix.system")):
        result = cli("sae", "import", tmp_path / name, "--name", "x", *base)
        assert result.exit_code == 2
        (line,) = [line for line in result.stderr.splitlines() if line.strip()]
        assert str(tmp_path / name) in line and f"Unsupported global: GLOBAL {global_name}" in line
        assert "weights_only" not in line and "pytorch.org" not in line
    assert not marker.exists()
    assert not workspace.sae_dir("x").exists()
    assert cli("sae", "list", "--workspace", workspace.root, "--json").json() == []


def test_broken_interprot_files_are_named(tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, K)
    state = {name: t.clone().contiguous() for name, t in theirs.state_dict().items()}
    state["w_dec"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan_k8.safetensors"))
    with pytest.raises(InputError, match="nan_k8.safetensors: w_dec contains NaN or infinite values"):
        import_sae(tmp_path / "nan_k8.safetensors", "interprot")
    state = {name: t.clone().contiguous() for name, t in theirs.state_dict().items()}
    state["b_pre"] = state["b_pre"][:3].clone()
    save_file(state, str(tmp_path / "short_k8.safetensors"))
    with pytest.raises(InputError, match=r"b_pre has shape \(3,\), expected \(24,\)"):
        import_sae(tmp_path / "short_k8.safetensors", "interprot")
    torch.save({"state_dict": [1, 2]}, tmp_path / "odd.ckpt")
    with pytest.raises(InputError, match="odd.ckpt: the checkpoint's state_dict is not a dict"):
        import_sae(tmp_path / "odd.ckpt", "interprot", k=4)
    ok = _save_safetensors(theirs, tmp_path / "ok.safetensors")
    with pytest.raises(InputError, match=f"k={D_SAE + 1} must be between 1 and d_sae={D_SAE}"):
        import_sae(ok, "interprot", k=D_SAE + 1)


def test_cli_imports_a_lightning_checkpoint(workspace, cli, tmp_path):
    theirs = ref.randomised(D_IN, D_SAE, K)
    torch.save(ref.lightning_checkpoint(theirs, ref.training_args(D_IN, D_SAE, K, layer=3)),
               tmp_path / "last.ckpt")
    result = cli("sae", "import", tmp_path / "last.ckpt", "--format", "interprot", "--name", "ip",
                 "--workspace", workspace.root, "--model", tmp_path / "esm.pt", "--layer", 3, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["k"] == K and result.json()["source"] == "imported:interprot"
    assert max(max_abs_diffs(load_sae(workspace.sae_dir("ip")), theirs, _x())) <= TOLERANCE
