"""Index and concepts straight from ESM-2: the same index as from a store, and the same on Ray workers."""

from __future__ import annotations

import json
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch

from sae.concepts import evaluate_sae_concepts
from sae.embed import embed_proteins
from sae.index import build_index
from sae.model import create_sae, install_sae, weights_hash
from sae.stream import StreamOptions
from storage.errors import InputError
from tests.esm_fixtures import tiny_checkpoint

BLOCK = 2500  # residues per block and per shard: several of each
SAE_ID = "tiny"


@pytest.fixture
def setup(workspace, swissprot_dir, tmp_path):
    from storage.protein import Protein
    from storage.proteins import import_proteins
    from storage.saes import SaeRecord, record_sae
    from storage.swissprot import parse_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proteins = [p for p in parse_file(swissprot_dir / "sprot_sample.dat.gz")
                    if isinstance(p, Protein) and 30 <= p.length <= 1400][:24]
    with workspace.db() as db:
        import_proteins(db, proteins)
    checkpoint = tiny_checkpoint(tmp_path / "models")
    torch.manual_seed(0)
    sae = create_sae("relu", 32, 48)
    directory = install_sae(sae, workspace.sae_dir(SAE_ID))
    with workspace.db() as db:
        record_sae(db, SaeRecord(sae_id=SAE_ID, architecture="relu", d_in=32, d_sae=48,
                                 plm_model=str(checkpoint), layer=2,
                                 path=str(directory.relative_to(workspace.root)),
                                 weights_hash=weights_hash(directory), source="trained"))
    return workspace, checkpoint


def _arrays(ws) -> dict[str, np.ndarray]:
    folder = ws.index_path(SAE_ID)
    return {path.name: np.load(path) for path in sorted(folder.glob("*.npy"))}


def _assert_same(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def test_index_from_the_model_equals_the_index_from_a_store(setup):
    ws, checkpoint = setup
    from_model = build_index(ws, SAE_ID, device="cpu", stream=StreamOptions(block_residues=BLOCK))
    assert from_model.source == "model"  # no store: the model, automatically
    assert not ws.embeddings_dir.exists() or not any(ws.embeddings_dir.rglob("shard_*"))
    model_arrays = _arrays(ws)
    model_concepts = evaluate_sae_concepts(ws, SAE_ID, min_proteins=2, device="cpu",
                                           stream=StreamOptions(block_residues=BLOCK))

    embed_proteins(ws, str(checkpoint), 2, None, 4096, "cpu", "auto", shard_residues=BLOCK)
    from_store = build_index(ws, SAE_ID, device="cpu")
    assert from_store.source == "store"
    assert from_store.index_hash == from_model.index_hash
    assert (from_store.n_proteins, from_store.nnz) == (from_model.n_proteins, from_model.nnz)
    _assert_same(model_arrays, _arrays(ws))
    store_concepts = evaluate_sae_concepts(ws, SAE_ID, min_proteins=2, device="cpu")
    assert store_concepts == model_concepts

    # with a store present, --from-model still computes and agrees (blocks = the store's shard size)
    again = build_index(ws, SAE_ID, device="cpu", stream=StreamOptions(from_model=True))
    assert again.source == "model" and again.index_hash == from_store.index_hash


def test_cli_from_model_reports_the_same_hash(cli, setup):
    ws, checkpoint = setup
    model = cli("index", SAE_ID, "--workspace", ws.root, "--device", "cpu", "--from-model",
                "--block-residues", str(BLOCK), "--json")
    assert model.exit_code == 0, model.stderr
    assert model.json()["source"] == "model"
    embed_proteins(ws, str(checkpoint), 2, None, 4096, "cpu", "auto", shard_residues=BLOCK)
    store = cli("index", SAE_ID, "--workspace", ws.root, "--device", "cpu", "--json")
    assert store.json()["index_hash"] == model.json()["index_hash"]
    assert store.json()["source"] == "store"


def test_width_mismatch_and_missing_checkpoint_are_one_line_errors(cli, setup, tmp_path):
    ws, checkpoint = setup
    wide = tiny_checkpoint(tmp_path / "wide", embed_dim=64)
    shutil.copy(wide, checkpoint)
    result = cli("index", SAE_ID, "--workspace", ws.root, "--device", "cpu", "--from-model")
    assert result.exit_code == 2 and "width 32" in result.stderr and "width 64" in result.stderr
    checkpoint.unlink()
    result = cli("index", SAE_ID, "--workspace", ws.root, "--device", "cpu", "--from-model")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not ws.index_path(SAE_ID).exists()


def test_workers_without_ray_is_a_usage_error(cli, setup):
    ws, _ = setup
    result = cli("index", SAE_ID, "--workspace", ws.root, "--workers", "2")
    assert result.exit_code == 2 and "--ray" in result.stderr


ray = pytest.importorskip("ray", reason="the Ray test needs the plmlabel[ray] extra")


@pytest.fixture
def local_ray():
    """One local Ray of 2 CPUs for the whole test (RayPool uses a running session and leaves it).

    ray.init installs its own SIGINT/SIGTERM handlers and shutdown leaves them: put the test process's
    back, or later tests that send themselves SIGTERM meet Ray's handler."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_two_ray_workers_equal_one_process(setup, local_ray):
    from sae.embed import RayOptions
    from sae.embeddings import EmbeddingStore

    ws, checkpoint = setup
    SMALL = 800  # noqa: N806 - several blocks of the short proteins
    with ws.db() as db:  # proteins of at most 400 residues, a few blocks' worth: Ray on 2 cores is slow
        rows = db.query("select accession, length from proteins where length <= 400 order by accession")
        chosen = [row["accession"] for row in rows][:16]
    local = build_index(ws, SAE_ID, chosen, device="cpu", stream=StreamOptions(block_residues=SMALL))
    local_arrays = _arrays(ws)
    on_ray = build_index(ws, SAE_ID, chosen, device="cpu",
                         stream=StreamOptions(ray=True, workers=2, block_residues=SMALL))
    assert on_ray.workers == 2 and on_ray.source == "model" and on_ray.n_residues > 2 * SMALL
    assert on_ray.index_hash == local.index_hash
    _assert_same(local_arrays, _arrays(ws))

    # concepts: each block counted on a worker, the sparse counts merged: the same report
    local_concepts = evaluate_sae_concepts(ws, SAE_ID, min_proteins=2, device="cpu",
                                           stream=StreamOptions(block_residues=SMALL))
    ray_concepts = evaluate_sae_concepts(ws, SAE_ID, min_proteins=2, device="cpu",
                                         stream=StreamOptions(ray=True, workers=2, block_residues=SMALL))
    assert ray_concepts == local_concepts and local_concepts.feature_concepts

    # embed: a shard a task, written in plan order: the same shards and numbers as one process
    summary = embed_proteins(ws, str(checkpoint), 2, chosen, 4096, "cpu", "auto", shard_residues=SMALL,
                             ray=RayOptions(workers=2))
    assert summary.workers == 2 and summary.n_shards > 2
    ray_store = dict(EmbeddingStore(summary.path).iter_proteins())
    shutil.rmtree(summary.path)
    embed_proteins(ws, str(checkpoint), 2, chosen, 4096, "cpu", "auto", shard_residues=SMALL)
    local_store = dict(EmbeddingStore(summary.path).iter_proteins())
    assert ray_store.keys() == local_store.keys()
    for accession, rows in local_store.items():
        np.testing.assert_array_equal(rows, ray_store[accession], err_msg=accession)

    # a checkpoint of another width is refused on the worker, in one line; the old index stays
    shutil.copy(tiny_checkpoint(ws.root / "wide", embed_dim=64), checkpoint)
    with pytest.raises(InputError, match="width 32.*width 64"):
        build_index(ws, SAE_ID, chosen, device="cpu", stream=StreamOptions(ray=True, workers=2))
    assert json.loads((ws.index_path(SAE_ID) / "manifest.json").read_text())["index_hash"] == local.index_hash


def test_unreachable_ray_address_is_one_line(setup):
    ws, _ = setup
    with pytest.raises(InputError, match="could not start or reach Ray at 127.0.0.1:1"):
        build_index(ws, SAE_ID, device="cpu", stream=StreamOptions(ray=True, ray_address="127.0.0.1:1"))
    assert not ws.index_path(SAE_ID).exists()
