"""The trainer on synthetic data with a planted sparse dictionary, resume, bad input, the batch producer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae.embeddings import EmbeddingStore
from sae.model import REGISTRY, create_sae
from sae.train import TrainConfig, embedding_batches, is_heldout, train_sae
from storage.errors import InputError, NotFoundError

D_IN, N_TRUE, K_TRUE, D_SAE = 32, 64, 3, 128
ARCH_KWARGS = {"topk": {"k": K_TRUE}, "batchtopk": {"k": K_TRUE}}
# the default L1 of 5 is for ESM-2 data; this data is weaker
TRAIN_KWARGS = {"relu": {"l1_coefficient": 1.0}, "gated": {"l1_coefficient": 1.0}}
# What each architecture must reach (mean over planted directions of the best cosine with a decoder row).
# Measured (600 steps, seed 0): relu 0.996, topk 0.999, batchtopk 0.996, jumprelu 0.996, gated 0.992.
MIN_COSINE = {"relu": 0.9, "topk": 0.9, "batchtopk": 0.9, "jumprelu": 0.9, "gated": 0.9}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_dictionary(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(N_TRUE, D_IN, generator=g)
    return dictionary / dictionary.norm(dim=-1, keepdim=True)


def planted_batches(dictionary: torch.Tensor, batch_size: int = 256, seed: int = 1):
    """Each sample: K_TRUE random dictionary directions with coefficients in [0.5, 1.5], plus an offset."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.linspace(-1, 1, D_IN)
    while True:
        chosen = torch.rand(batch_size, N_TRUE, generator=g).argsort(dim=-1)[:, :K_TRUE]
        coefficients = torch.zeros(batch_size, N_TRUE)
        coefficients.scatter_(1, chosen, 0.5 + torch.rand(batch_size, K_TRUE, generator=g))
        yield coefficients @ dictionary + offset


def mean_best_cosine(dictionary: torch.Tensor, sae) -> float:
    rows = sae.W_dec.detach()
    rows = rows / rows.norm(dim=-1, keepdim=True)
    return float((dictionary @ rows.T).max(dim=1).values.mean())


@pytest.mark.parametrize("arch", [key for key, (_, model_class) in REGISTRY.items() if model_class.trainable])
def test_each_architecture_recovers_a_planted_dictionary(arch):
    dictionary = planted_dictionary()
    torch.manual_seed(0)
    sae = create_sae(arch, D_IN, D_SAE, normalization="scale", **ARCH_KWARGS.get(arch, {}))
    cfg = TrainConfig(total_tokens=600 * 256, batch_size=256, lr=3e-3, **TRAIN_KWARGS.get(arch, {}))
    result = train_sae(sae, planted_batches(dictionary), cfg)
    assert result.steps == 600 and result.tokens == 600 * 256
    cosine = mean_best_cosine(dictionary, sae)
    assert cosine > MIN_COSINE[arch], f"{arch}: mean best cosine {cosine:.3f}"
    assert result.final["fvu"] < 0.3
    assert 1.0 <= result.final["l0"] <= 12.0  # sparse: the data has 3 active directions per sample
    assert sae.cfg.norm_scale is not None and not sae.training
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)
    assert result.history and result.history[-1]["step"] == 600


def test_batchtopk_learns_an_inference_threshold_matching_k():
    dictionary = planted_dictionary()
    torch.manual_seed(0)
    sae = create_sae("batchtopk", D_IN, D_SAE, k=K_TRUE, normalization="scale")
    train_sae(sae, planted_batches(dictionary), TrainConfig(total_tokens=600 * 256, batch_size=256, lr=3e-3))
    assert float(sae.threshold[0]) > 0
    x = next(planted_batches(dictionary, 2048, seed=7))
    l0 = float((sae.encode(x) > 0).sum(-1).float().mean())
    assert 1.5 < l0 < 6, l0  # the threshold reproduces about k active features per sample


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    dictionary = planted_dictionary()
    cfg = TrainConfig(total_tokens=120 * 128, batch_size=128, lr=3e-3, checkpoint_every=50)

    def fresh():
        torch.manual_seed(0)
        return create_sae("topk", D_IN, D_SAE, k=K_TRUE, normalization="scale")

    whole = fresh()
    train_sae(whole, planted_batches(dictionary, 128), cfg)

    class Stop(Exception):
        pass

    def stop_at_70(step, total, metrics):
        if step == 70:
            raise Stop

    first = fresh()
    with pytest.raises(Stop):
        train_sae(first, planted_batches(dictionary, 128), cfg, checkpoint_dir=tmp_path, progress=stop_at_70)
    resumed = fresh()
    result = train_sae(resumed, planted_batches(dictionary, 128), cfg, checkpoint_dir=tmp_path, resume=True)
    assert result.resumed_from_step == 50  # the last periodic checkpoint before the stop
    assert result.steps == 120
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert whole.cfg.norm_scale == resumed.cfg.norm_scale


def test_interrupt_writes_a_checkpoint_and_resume_without_one_starts_fresh(tmp_path):
    dictionary = planted_dictionary()
    cfg = TrainConfig(total_tokens=40 * 64, batch_size=64, checkpoint_every=0)

    def interrupt(step, total, metrics):
        if step == 13:
            raise KeyboardInterrupt

    sae = create_sae("relu", D_IN, 64, normalization="scale")
    with pytest.raises(KeyboardInterrupt):
        train_sae(sae, planted_batches(dictionary, 64), cfg, checkpoint_dir=tmp_path, progress=interrupt)
    again = create_sae("relu", D_IN, 64, normalization="scale")
    assert train_sae(again, planted_batches(dictionary, 64), cfg, checkpoint_dir=tmp_path,
                     resume=True).resumed_from_step == 13
    other = create_sae("relu", D_IN, 64, normalization="scale")
    assert train_sae(other, planted_batches(dictionary, 64), cfg, checkpoint_dir=tmp_path / "none",
                     resume=True).resumed_from_step is None


def test_resume_refuses_other_settings(tmp_path):
    dictionary = planted_dictionary()
    cfg = TrainConfig(total_tokens=20 * 64, batch_size=64, checkpoint_every=10)
    train_sae(create_sae("relu", D_IN, 64), planted_batches(dictionary, 64), cfg, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="batch_size=64, not 32"):
        train_sae(create_sae("relu", D_IN, 64), planted_batches(dictionary, 32),
                  cfg.model_copy(update={"batch_size": 32}), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(InputError, match="another architecture or shape"):
        train_sae(create_sae("relu", D_IN, 32), planted_batches(dictionary, 64), cfg, checkpoint_dir=tmp_path,
                  resume=True)


def test_nan_input_and_wrong_width_are_clear_errors():
    cfg = TrainConfig(total_tokens=10 * 8, batch_size=8)

    def with_nan():
        yield torch.randn(8, D_IN)
        bad = torch.randn(8, D_IN)
        bad[3, 5] = float("nan")
        yield bad

    with pytest.raises(InputError, match="batch 1 of the training data contains NaN"):
        train_sae(create_sae("relu", D_IN, 64), with_nan(), cfg)
    with pytest.raises(InputError, match=r"shape \(8, 20\)"):
        train_sae(create_sae("relu", D_IN, 64), iter([torch.randn(8, 20)]), cfg)


def test_a_short_iterator_ends_training_early():
    result = train_sae(create_sae("relu", D_IN, 64), iter([torch.randn(16, D_IN)] * 3),
                       TrainConfig(total_tokens=16 * 100, batch_size=16))
    assert result.steps == 3 and result.tokens == 48


def test_learning_rate_schedule_warms_up_and_decays_to_zero():
    cfg = TrainConfig(total_tokens=1000, batch_size=10, lr=1.0, warmup_steps=10, decay_fraction=0.2)
    lrs = [cfg.lr_at(step) for step in range(cfg.steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == 1.0 and lrs[79] == 1.0
    assert lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)


def _store(tmp_path, shards: list[list[tuple[str, int]]], d: int = 8) -> EmbeddingStore:
    """A store whose row values encode (protein number, residue) so batches can be traced back."""
    store = EmbeddingStore.create(tmp_path / "emb", model="m", layer=1, d_model=d)
    protein = 0
    for number, proteins in enumerate(shards):
        items = []
        for accession, length in proteins:
            rows = np.zeros((length, d), dtype=np.float32)
            rows[:, 0] = protein
            rows[:, 1] = np.arange(length)
            items.append((accession, rows))
            protein += 1
        store.write_shard(number, items)
    return store


def test_embedding_batches_cover_every_residue_once_per_pass_shuffled(tmp_path):
    store = _store(tmp_path, [[("A", 30), ("B", 50)], [("C", 40)], [("D", 25), ("E", 5)]])
    batches = list(embedding_batches(store, 16, 32, seed=3, loop=False))
    assert all(b.dtype == torch.float32 and b.shape[1] == 8 for b in batches)
    assert all(b.shape[0] == 16 for b in batches[:-1])
    rows = torch.cat(batches)
    assert rows.shape[0] == 150
    assert len({(int(r[0]), int(r[1])) for r in rows}) == 150
    order = rows[:, 0].tolist()
    assert order != sorted(order)  # shuffled, not shard order
    again = torch.cat(list(embedding_batches(store, 16, 32, seed=3, loop=False)))
    assert torch.equal(rows, again)
    other = torch.cat(list(embedding_batches(store, 16, 32, seed=4, loop=False)))
    assert not torch.equal(rows, other)


def test_embedding_batches_loop_for_the_requested_tokens_and_filter_proteins(tmp_path):
    store = _store(tmp_path, [[("A", 30), ("B", 50)], [("C", 40)]])
    batches = list(embedding_batches(store, 32, 64, seed=0, n_tokens=1000))
    assert sum(b.shape[0] for b in batches) == 1024 and all(b.shape[0] == 32 for b in batches)
    only = torch.cat(list(embedding_batches(store, 10, 20, seed=0, accessions=["B"], loop=False)))
    assert only.shape[0] == 50 and set(only[:, 0].tolist()) == {1.0}
    with pytest.raises(InputError, match="no embeddings to train on"):
        next(embedding_batches(store, 10, 20, seed=0, accessions=["Z"]))
    with pytest.raises(NotFoundError, match="run `plmlabel embed` first"):
        next(embedding_batches(EmbeddingStore(tmp_path / "missing"), 10, 20, seed=0))


def test_heldout_split_is_fixed_and_about_the_fraction():
    accessions = [f"P{i:05d}" for i in range(4000)]
    held = [a for a in accessions if is_heldout(a, 0.05, "salt")]
    assert 150 < len(held) < 250
    assert held == [a for a in accessions if is_heldout(a, 0.05, "salt")]
    assert held != [a for a in accessions if is_heldout(a, 0.05, "other")]
    assert not any(is_heldout(a, 0.0, "salt") for a in accessions)
