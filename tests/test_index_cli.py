"""`plmlabel index` and `plmlabel feature show` through the real CLI entry point."""

from __future__ import annotations

import shutil

import pytest

from sae.model import create_sae, install_sae
from storage.workspace import Workspace
from tests.index_fixtures import (
    D_SAE,
    SAE_ID,
    TM_FEATURE,
    ZF_FEATURE,
    copy_template,
    planted_sae,
    register_sae,
    sample_proteins,
    shared_swissprot,
)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Workspace:
    return copy_template(shared_swissprot(), tmp_path_factory.mktemp("cli") / "ws")


@pytest.fixture
def fresh(tmp_path) -> Workspace:
    """Planted proteins, embeddings and SAE, not yet indexed."""
    return copy_template(shared_swissprot(), tmp_path / "ws", indexed=False)


def _one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_index_json(cli, fresh) -> None:
    result = cli("index", SAE_ID, "--workspace", fresh.root, "--seed", "3", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["n_features"] == D_SAE and summary["seed"] == 3
    assert summary["n_proteins"] == len(sample_proteins(shared_swissprot()))
    assert summary["residues_per_s"] > 0
    assert (fresh.index_path(SAE_ID) / "manifest.json").exists()


def test_index_text_and_sizes_from_flags(cli, fresh, tmp_path) -> None:
    accessions = [p.accession for p in sample_proteins(shared_swissprot())[:40]]
    listing = tmp_path / "some.txt"
    listing.write_text("# a subset\n" + "\n".join(accessions) + "\n")
    result = cli("index", SAE_ID, "--workspace", fresh.root, "--proteins", listing, "--n-top", "4",
                 "--n-heldout", "8")
    assert result.exit_code == 0, result.stderr
    assert "Indexed 40 proteins" in result.stdout
    shown = cli("feature", "show", SAE_ID, str(TM_FEATURE), "--workspace", fresh.root, "--json").json()
    assert sum(e["kind"] == "top" for e in shown["examples"]) <= 4
    assert len(shown["heldout"]) == 8


def test_feature_show_text(cli, indexed) -> None:
    result = cli("feature", "show", SAE_ID, str(ZF_FEATURE), "--workspace", indexed.root, "--top", "2")
    assert result.exit_code == 0, result.stderr
    assert f"Feature {ZF_FEATURE} of SAE {SAE_ID}" in result.stdout
    assert "Zinc finger" in result.stdout  # the Swiss-Prot features under the firing residues
    assert "#1 " in result.stdout and "#2 " in result.stdout and "#3 " not in result.stdout
    assert "held-out proteins are kept apart" in result.stdout


def test_feature_show_json(cli, indexed) -> None:
    data = cli("feature", "show", SAE_ID, str(ZF_FEATURE), "--workspace", indexed.root, "--json").json()
    assert data["feature"] == ZF_FEATURE and data["max_activation"] > 0
    top = data["examples"][0]
    assert top["kind"] == "top" and top["firing"]
    assert any(f["type"] == "Zinc finger" for f in top["overlapping_features"])
    assert not {e["accession"] for e in data["examples"]} & {h["accession"] for h in data["heldout"]}


def test_feature_out_of_range(cli, indexed) -> None:
    line = _one_line_error(cli("feature", "show", SAE_ID, str(D_SAE), "--workspace", indexed.root))
    assert "out of range" in line


def test_unknown_sae(cli, indexed) -> None:
    assert "no SAE named" in _one_line_error(cli("index", "nosuch", "--workspace", indexed.root))


def test_feature_show_before_index(cli, fresh) -> None:
    line = _one_line_error(cli("feature", "show", SAE_ID, "0", "--workspace", fresh.root))
    assert "plmlabel index" in line


def test_index_from_older_weights(cli, tmp_path) -> None:
    ws = copy_template(shared_swissprot(), tmp_path / "ws")
    install_sae(planted_sae(seed=3), ws.sae_dir(SAE_ID))
    line = _one_line_error(cli("feature", "show", SAE_ID, "0", "--workspace", ws.root))
    assert "rebuild with `plmlabel index" in line
    assert cli("index", SAE_ID, "--workspace", ws.root, "--json").exit_code == 0
    assert cli("feature", "show", SAE_ID, "0", "--workspace", ws.root, "--json").exit_code == 0


def test_sae_width_differs(cli, fresh) -> None:
    register_sae(fresh, create_sae("relu", 48, 8), sae_id="wide")
    line = _one_line_error(cli("index", "wide", "--workspace", fresh.root))
    assert "width 48" in line and "width 32" in line


def test_no_embeddings(cli, fresh) -> None:
    shutil.rmtree(fresh.embeddings_dir)
    line = _one_line_error(cli("index", SAE_ID, "--workspace", fresh.root, "--from-store"))
    assert "plmlabel embed" in line
    assert "has width 320" in _one_line_error(cli("index", SAE_ID, "--workspace", fresh.root))


def test_listed_protein_without_embedding(cli, fresh, tmp_path) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text("P99999999\n")
    assert "no embeddings" in _one_line_error(cli("index", SAE_ID, "--workspace", fresh.root,
                                                  "--proteins", listing))


@pytest.mark.parametrize("args", [("index", "--help"), ("feature", "show", "--help"), ("concepts", "--help")])
def test_help(cli, args) -> None:
    result = cli(*args)
    assert result.exit_code == 0 and "Usage" in result.stdout
