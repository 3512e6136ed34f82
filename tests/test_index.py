"""The activation index on real Swiss-Prot proteins with planted embeddings and a planted SAE."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import sae.index_build
from sae.index import ExampleSizes, build_index, load_feature_examples, open_index
from sae.index_select import bins_of
from sae.model import install_sae, load_sae
from storage.errors import InputError, NotFoundError
from storage.features_store import list_feature_stats
from storage.workspace import Workspace
from tests.index_fixtures import (
    D_SAE,
    SAE_ID,
    ZF_FEATURE,
    copy_template,
    planted_sae,
    sample_proteins,
    shared_swissprot,
)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Workspace:
    return copy_template(shared_swissprot(), tmp_path_factory.mktemp("indexed") / "ws")


@pytest.fixture
def private(swissprot_dir, tmp_path) -> Workspace:
    """A copy the test may change."""
    return copy_template(swissprot_dir, tmp_path / "ws")


def _activations(workspace: Workspace) -> dict[str, np.ndarray]:
    """Every protein's activations, computed directly (the reference the index must match)."""
    from sae.index import embedding_store_for, sae_directory
    from storage.saes import get_sae

    with workspace.db() as db:
        record = get_sae(db, SAE_ID)
    sae = load_sae(sae_directory(workspace, record))
    store, _, _ = embedding_store_for(workspace, record)
    with torch.no_grad():
        return {acc: sae.encode(torch.from_numpy(np.asarray(e, dtype=np.float32))).numpy()
                for acc, e in store.iter_proteins()}


def test_summary_and_database_rows(indexed, swissprot_dir) -> None:
    proteins = sample_proteins(swissprot_dir)
    reader = open_index(indexed, SAE_ID)
    assert reader.n_proteins == len(proteins)
    assert reader.n_residues == sum(p.length for p in proteins)
    with indexed.db() as db:
        rows = list_feature_stats(db, SAE_ID)
    assert [r.feature for r in rows] == list(range(D_SAE))
    assert {r.index_hash for r in rows} == {reader.index_hash}
    stats = reader.feature_stats(ZF_FEATURE)
    zinc = sum(any(f.type == "Zinc finger" for f in p.features) for p in proteins)
    assert stats.n_proteins == zinc
    assert rows[ZF_FEATURE].frac_proteins == pytest.approx(zinc / len(proteins))
    assert len(rows[ZF_FEATURE].quantiles) == 11


def test_maxima_and_residue_activations_match_the_sae(indexed) -> None:
    acts = _activations(indexed)
    reader = open_index(indexed, SAE_ID)
    accessions = reader.accessions()
    maxima = np.stack([acts[a].max(axis=0) for a in accessions])  # [N, F]
    argmax = np.stack([acts[a].argmax(axis=0) for a in accessions])
    for feature in range(D_SAE):
        proteins, values, residues = reader.protein_maxima(feature)
        np.testing.assert_array_equal(proteins, np.flatnonzero(maxima[:, feature] > 0))
        np.testing.assert_allclose(values, maxima[proteins, feature], rtol=1e-6)
        np.testing.assert_array_equal(residues, argmax[proteins, feature])
        assert reader.feature_stats(feature).max_activation == pytest.approx(float(values.max(initial=0)))
        for slot in reader.slots(feature):
            column = acts[slot.accession][:, feature]
            positions, firing = reader.residue_activations(feature, slot.slot)
            np.testing.assert_array_equal(positions, np.flatnonzero(column > 0))
            np.testing.assert_allclose(firing, column[column > 0], rtol=2e-3, atol=1e-4)


def test_every_feature_has_disjoint_sets_over_the_same_bins(indexed) -> None:
    reader = open_index(indexed, SAE_ID)
    checked = 0
    for feature in range(D_SAE):
        proteins, values, _ = reader.protein_maxima(feature)
        binned = bins_of(values, float(values.max(initial=0)))
        bins = dict(zip(proteins.tolist(), binned.tolist(), strict=True))
        examples = [s.protein for s in reader.examples(feature)]
        heldout = [s.protein for s in reader.heldout(feature)]
        assert not set(examples) & set(heldout), f"feature {feature}: a held-out protein is an example"
        assert len(set(examples)) == len(examples) and len(set(heldout)) == len(heldout)
        assert len(heldout) == 24
        example_bins = {bins.get(p, -1) for p in examples}
        heldout_bins = {bins.get(p, -1) for p in heldout}
        left = {bins.get(p, -1) for p in range(reader.n_proteins) if p not in set(examples)}
        assert heldout_bins <= example_bins | left
        assert example_bins & left <= heldout_bins, f"feature {feature}: held-out misses a bin"
        checked += 1
    assert checked == D_SAE


def test_same_seed_same_sets_other_seed_other_sets(private, indexed) -> None:
    first = open_index(indexed, SAE_ID)
    build_index(private, SAE_ID, seed=0)
    again = open_index(private, SAE_ID)
    assert again.index_hash == first.index_hash
    for feature in range(D_SAE):
        assert again.slots(feature) == first.slots(feature)
    build_index(private, SAE_ID, seed=1)
    other = open_index(private, SAE_ID)
    assert other.index_hash != first.index_hash
    assert any(other.slots(f) != first.slots(f) for f in range(D_SAE))


def test_load_feature_examples(indexed) -> None:
    with indexed.db() as db:
        examples = load_feature_examples(indexed, db, SAE_ID, ZF_FEATURE)
    assert examples.feature == ZF_FEATURE and examples.n_indexed > 0
    kinds = [e.kind for e in examples.examples]
    assert kinds.count("top") == 10 and kinds.count("silent") == 10
    top = examples.examples[0]
    assert top.protein.protein_name and top.protein.features
    assert top.normalized == pytest.approx(1.0)
    assert all(1 <= r.position <= top.protein.length for r in top.firing)
    assert any(f.type == "Zinc finger" for f in top.overlapping_features())
    assert all(e.firing == () for e in examples.examples if e.kind == "silent")
    assert len(examples.heldout) == len(examples.heldout_actuals) == len(examples.heldout_normalized) == 24
    assert len(examples.heldout_firing) == 24
    assert all(0.0 <= n <= 1.0 for n in examples.heldout_normalized)
    shown = {e.protein.accession for e in examples.examples}
    assert not shown & {p.accession for p in examples.heldout}
    assert examples.top_concepts == ()
    # the validation half: as large, disjoint from the examples and from the test half
    assert examples.has_validation and len(examples.validation) == len(examples.validation_normalized) == 24
    validation = {p.accession for p in examples.validation}
    assert not validation & shown and not validation & {p.accession for p in examples.heldout}
    levels = examples.validation_normalized
    assert any(n > 0 for n in levels) and any(n == 0 for n in levels)


def test_format_1_index_stays_readable_without_a_validation_half(private) -> None:
    import json

    manifest = private.index_path(SAE_ID) / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": 1}))
    with private.db() as db:
        examples = load_feature_examples(private, db, SAE_ID, ZF_FEATURE)
    assert not examples.has_validation and len(examples.heldout) == 24


def test_bad_feature_and_missing_index(indexed, private) -> None:
    with indexed.db() as db:
        with pytest.raises(InputError, match="out of range"):
            load_feature_examples(indexed, db, SAE_ID, D_SAE)
        with pytest.raises(InputError, match="out of range"):
            load_feature_examples(indexed, db, SAE_ID, -1)
    shutil.rmtree(private.index_path(SAE_ID))
    with private.db() as db, pytest.raises(NotFoundError, match="plmlabel index"):
        load_feature_examples(private, db, SAE_ID, 0)


def test_index_of_older_weights_is_refused(private) -> None:
    install_sae(planted_sae(seed=1), private.sae_dir(SAE_ID))  # same shape, other weights
    with private.db() as db, pytest.raises(InputError, match="rebuild with `plmlabel index"):
        load_feature_examples(private, db, SAE_ID, 0)
    build_index(private, SAE_ID)
    with private.db() as db:
        assert load_feature_examples(private, db, SAE_ID, 0).feature == 0


def test_a_failed_build_leaves_the_old_index_and_rows(private, monkeypatch) -> None:
    before = open_index(private, SAE_ID).index_hash
    with private.db() as db:
        rows_before = list_feature_stats(db, SAE_ID)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sae.index_build, "select", broken)
    with pytest.raises(RuntimeError):
        build_index(private, SAE_ID, seed=5)
    assert json.loads((private.index_path(SAE_ID) / "manifest.json").read_text())["index_hash"] == before
    assert [p.name for p in private.index_dir.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []
    with private.db() as db:
        assert list_feature_stats(db, SAE_ID) == rows_before


def test_protein_subset_and_sizes(private, swissprot_dir) -> None:
    subset = [p.accession for p in sample_proteins(swissprot_dir)[:50]]
    summary = build_index(private, SAE_ID, accessions=subset, seed=2,
                          sizes=ExampleSizes(n_top=3, per_bin=1, n_silent=2, n_heldout=6))
    assert summary.n_proteins == 50
    reader = open_index(private, SAE_ID)
    assert set(reader.accessions()) == set(subset)
    for feature in range(D_SAE):
        kinds = [s.kind for s in reader.slots(feature)]
        assert kinds.count("top") <= 3 and kinds.count("silent") <= 2 and kinds.count("heldout") <= 6
    with pytest.raises(InputError, match="no embeddings"):
        build_index(private, SAE_ID, accessions=["NOPE1"])


def test_sae_width_differs_from_the_embeddings(private) -> None:
    from sae.model import create_sae
    from tests.index_fixtures import register_sae

    register_sae(private, create_sae("relu", 16, 8), sae_id="narrow")
    with pytest.raises(InputError, match="width 16"):
        build_index(private, "narrow")


def test_no_embeddings_yet(workspace) -> None:
    from sae.stream import StreamOptions
    from tests.index_fixtures import register_sae

    register_sae(workspace, planted_sae())
    with pytest.raises(NotFoundError, match="plmlabel embed"):
        build_index(workspace, SAE_ID, stream=StreamOptions(from_model=False))
    # without a store the index comes from the model, whose width must then fit the SAE
    with pytest.raises(InputError, match="width 32, but esm2_t6_8M_UR50D has width 320"):
        build_index(workspace, SAE_ID)
