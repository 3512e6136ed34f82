"""`embed --sample-residues`: a uniform, seeded, order-free sample of residues that `sae train` reads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sae.embed_sample import ResidueReservoir, read_positions, sample_count
from sae.embeddings import EmbeddingStore
from sae.plm import embed_sequences, load_esm
from sae.train import train_in_workspace
from tests.esm_fixtures import insert_proteins, read_sprot_sequences, tiny_checkpoint


def _synthetic(n_proteins: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Proteins whose rows say (protein number, position), so a sample tells where each row came from."""
    rng = np.random.default_rng(seed)
    items = []
    for p, length in enumerate(rng.integers(20, 600, n_proteins).tolist()):
        rows = np.stack([np.full(length, p), np.arange(length)], axis=1).astype(np.float32)
        items.append((f"P{p:05d}", rows))
    return items


def _sampled(items, n, seed, blocks=1):
    reservoir = ResidueReservoir(n, seed)
    peak = 0
    for part in np.array_split(np.arange(len(items)), blocks):
        for i in part.tolist():
            reservoir.add(*items[i])
            peak = max(peak, reservoir._held)
    return reservoir.result(), peak


def test_the_sample_is_uniform_over_residues_and_memory_is_bounded():
    items = _synthetic(300)
    lengths = np.array([len(rows) for _, rows in items])
    n = 6000
    sample, peak = _sampled(items, n, seed=1)
    assert sum(len(positions) for _, positions, _ in sample) == n
    assert peak <= n + 4096 + lengths.max()  # at most about 1.25 n candidate rows held at once
    counts = np.zeros(len(items))
    relative = []
    for accession, positions, rows in sample:
        p = int(accession[1:])
        counts[p] = len(positions)
        assert np.array_equal(rows[:, 0], np.full(len(rows), p)) and np.array_equal(rows[:, 1], positions)
        assert np.all(np.diff(positions) > 0)  # each residue once, by position
        relative.append(positions / lengths[p])
    expected = n * lengths / lengths.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(items) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof), chi2  # per-protein counts follow the lengths
    assert np.corrcoef(counts, lengths)[0, 1] > 0.85  # (about 0.92 expected: ~20 residues a protein)
    deciles = np.histogram(np.concatenate(relative), bins=10, range=(0, 1))[0]
    assert np.all(np.abs(deciles - n / 10) < 5 * math.sqrt(n / 10))  # and positions within proteins too


def test_the_sample_depends_on_the_seed_not_on_order_or_blocks():
    items = _synthetic(120)
    first, _ = _sampled(items, 2000, seed=5)
    again, _ = _sampled(items[::-1], 2000, seed=5, blocks=7)

    def keys(sample):
        return [(a, p.tolist()) for a, p, _ in sample]

    assert keys(first) == keys(again)
    assert keys(first) != keys(_sampled(items, 2000, seed=6)[0])
    everything, _ = _sampled(items, 10**6, seed=5)
    assert sum(len(p) for _, p, _ in everything) == sum(len(r) for _, r in items)


def test_sample_count_takes_a_count_or_a_fraction():
    assert sample_count(500, 10_000) == 500 and sample_count(50_000, 10_000) == 10_000
    assert sample_count(0.05, 10_001) == 501 and sample_count(1e-9, 100) == 1


@pytest.fixture
def proteins(swissprot_dir):
    return [(acc, seq) for acc, seq in read_sprot_sequences(swissprot_dir / "sprot_sample.dat.gz", 20)
            if len(seq) < 600][:6]


@pytest.fixture
def ws(workspace, proteins):
    insert_proteins(workspace, proteins)
    return workspace


def _embed(cli, ws, checkpoint, *extra):
    return cli("embed", "--workspace", ws.root, "--model", checkpoint, "--layer", "2", "--device", "cpu",
               "--shard-residues", "2500", *extra)


@pytest.mark.slow
def test_embed_keeps_a_sample_of_the_models_embeddings_and_train_reads_it(cli, ws, proteins, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "models")
    result = _embed(cli, ws, checkpoint, "--sample-residues", "800", "--seed", "3", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    total = sum(len(s) for _, s in proteins)
    assert (summary["n_sampled"], summary["n_residues"], summary["seed"]) == (800, total, 3)
    store = EmbeddingStore(summary["path"]).require()
    assert store.manifest["sample_residues"] == 800 and store.n_residues() == 800
    expected = dict(embed_sequences(load_esm(str(checkpoint), "cpu"), proteins, layer=2))
    rows_by_protein = dict(store.iter_proteins())
    positions = np.concatenate([read_positions(store, n) for n in store.shard_numbers()])
    at = 0
    for accession in store.accessions():
        rows = rows_by_protein[accession]
        where = positions[at:at + len(rows)]
        at += len(rows)
        np.testing.assert_allclose(rows.astype(np.float32), expected[accession][where], atol=1e-2, rtol=1e-2)

    # the same seed with another block size: the same residues
    again = _embed(cli, ws, checkpoint, "--sample-residues", "800", "--seed", "3", "--shard-residues", "700",
                   "--json")
    assert again.exit_code == 0, again.stderr
    again_positions = np.concatenate([read_positions(store, n) for n in store.shard_numbers()])
    assert np.array_equal(again_positions, positions)

    record, trained = train_in_workspace(ws, "sampled", model=str(checkpoint), layer=2, architecture="relu",
                                         d_sae=64, tokens=2048, batch_size=256, device="cpu",
                                         checkpoint_every=0)
    assert trained.steps == 8 and record.d_in == 32

    # a full embed does not mix into the sample; a fraction replaces it
    full = _embed(cli, ws, checkpoint)
    assert full.exit_code == 2 and "sample" in full.stderr and len(full.stderr.strip().splitlines()) == 1
    fraction = _embed(cli, ws, checkpoint, "--sample-residues", "0.1", "--json")
    assert fraction.json()["n_sampled"] == math.ceil(0.1 * total) == EmbeddingStore(store.path).n_residues()


def test_a_full_store_is_not_replaced_by_a_sample(cli, ws, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "models")
    assert _embed(cli, ws, checkpoint).exit_code == 0
    result = _embed(cli, ws, checkpoint, "--sample-residues", "100")
    assert result.exit_code == 2 and "every residue" in result.stderr


@pytest.mark.parametrize("value", ["0", "1.5", "-3", "many", "1.0"])
def test_bad_sample_sizes_are_one_line_errors(cli, ws, tmp_path, value):
    result = _embed(cli, ws, tmp_path / "none.pt", "--sample-residues", value)
    assert result.exit_code == 2 and "--sample-residues" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not ws.embeddings_dir.exists()


def test_embed_workers_need_ray(cli, ws, tmp_path):
    result = _embed(cli, ws, tmp_path / "none.pt", "--workers", "2")
    assert result.exit_code == 2 and "--ray" in result.stderr
