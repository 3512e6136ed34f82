"""Example and held-out selection for one feature, and the external grouping step, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from sae.index_select import SILENT, ExampleSizes, _allocate, bins_of, select
from sae.index_store import (
    KIND_HELDOUT,
    KIND_QUANTILE,
    KIND_SILENT,
    KIND_TOP,
    KIND_VALIDATION,
    Spill,
    bucket_sort,
)


def _maxima(n_total: int, n_firing: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    proteins = np.sort(rng.choice(n_total, size=n_firing, replace=False))
    values = rng.uniform(0.01, 5.0, size=n_firing).astype(np.float32)
    return proteins, values


def _strata(selection, proteins: np.ndarray, values: np.ndarray) -> tuple[list[int], list[int]]:
    """Stratum (bin 0..9, or SILENT) of every example and every held-out protein."""
    bins = dict(zip(proteins.tolist(), bins_of(values, float(values.max())).tolist(), strict=True))
    strata = [bins.get(p, SILENT) for p in selection.proteins.tolist()]
    held = selection.kinds == KIND_HELDOUT
    return ([s for s, h in zip(strata, held, strict=True) if not h],
            [s for s, h in zip(strata, held, strict=True) if h])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sets_are_disjoint_sized_and_span_the_same_bins(seed: int) -> None:
    proteins, values = _maxima(5000, 3000, seed)
    sizes = ExampleSizes()
    chosen = select(proteins, values, 5000, sizes, np.random.default_rng(seed))
    ids = chosen.proteins.tolist()
    assert len(ids) == len(set(ids)), "a protein appears twice"
    kinds = chosen.kinds.tolist()
    assert kinds.count(KIND_TOP) == 10
    assert kinds.count(KIND_QUANTILE) == 20
    assert kinds.count(KIND_SILENT) == 10
    assert kinds.count(KIND_HELDOUT) == 24
    # the top examples are the strongest proteins
    top_values = chosen.values[chosen.kinds == KIND_TOP]
    np.testing.assert_allclose(np.sort(top_values), np.sort(values)[-10:])
    # silent ones never fire
    held_silent = (chosen.kinds == KIND_HELDOUT) & (chosen.values == 0)
    silent = chosen.proteins[(chosen.kinds == KIND_SILENT) | held_silent]
    assert not set(silent.tolist()) & set(proteins.tolist())
    example_strata, heldout_strata = _strata(chosen, proteins, values)
    assert set(heldout_strata) == set(example_strata)


def test_same_seed_same_sets_other_seed_other_sets() -> None:
    proteins, values = _maxima(2000, 800)
    a = select(proteins, values, 2000, ExampleSizes(), np.random.default_rng([3, 7]))
    b = select(proteins, values, 2000, ExampleSizes(), np.random.default_rng([3, 7]))
    c = select(proteins, values, 2000, ExampleSizes(), np.random.default_rng([4, 7]))
    np.testing.assert_array_equal(a.proteins, b.proteins)
    np.testing.assert_array_equal(a.kinds, b.kinds)
    assert not np.array_equal(a.proteins, c.proteins)


def test_rare_feature_takes_what_there_is() -> None:
    proteins = np.array([3, 17, 40, 41, 99])
    values = np.array([1.0, 0.2, 0.9, 0.05, 0.5], dtype=np.float32)
    chosen = select(proteins, values, 300, ExampleSizes(), np.random.default_rng(0))
    assert sorted(chosen.proteins[chosen.kinds == KIND_TOP].tolist()) == sorted(proteins.tolist())
    assert (chosen.kinds == KIND_QUANTILE).sum() == 0
    held = chosen.proteins[chosen.kinds == KIND_HELDOUT]
    assert len(held) == 24 and not set(held.tolist()) & set(proteins.tolist())
    assert len(set(chosen.proteins.tolist())) == len(chosen.proteins)


def test_silent_draws_in_a_large_index_use_rejection_and_stay_valid() -> None:
    proteins, values = _maxima(1_000_000, 2000, seed=5)
    chosen = select(proteins, values, 1_000_000, ExampleSizes(n_silent=50, n_heldout=60),
                    np.random.default_rng(1))
    silent = chosen.proteins[chosen.values == 0]
    assert len(silent) >= 50 and len(set(silent.tolist())) == len(silent)
    assert not set(silent.tolist()) & set(proteins.tolist())
    assert silent.min() >= 0 and silent.max() < 1_000_000


def test_dead_feature_gets_only_silent_proteins() -> None:
    chosen = select(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), 100, ExampleSizes(),
                    np.random.default_rng(0))
    assert set(chosen.kinds.tolist()) == {KIND_SILENT, KIND_HELDOUT, KIND_VALIDATION}
    assert len(set(chosen.proteins.tolist())) == 10 + 24 + 24  # silent examples, test and validation halves


def test_allocation_fills_every_occupied_stratum_then_proportionally() -> None:
    strata = [SILENT, *range(10)]
    example_count = {SILENT: 10, 9: 12, 5: 2, 0: 2}
    targets = _allocate(24, example_count, dict.fromkeys(strata, 100), strata)
    assert sum(targets.values()) == 24
    assert all(targets[s] >= 1 for s in example_count)
    assert targets[9] > targets[5] and targets[SILENT] > targets[0]
    # a stratum with nothing left passes its share to a neighbour
    short = _allocate(24, example_count, {**dict.fromkeys(strata, 100), 9: 0}, strata)
    assert short[9] == 0 and sum(short.values()) == 24 and short[8] > 0


def test_bucket_sort_groups_rows_stably_in_small_chunks(tmp_path) -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50, size=10_000)
    payload = np.arange(10_000, dtype=np.int32)
    spill = Spill(tmp_path, "t", {"key": np.int64, "payload": np.int32})
    for start in range(0, 10_000, 1234):
        spill.append(key=keys[start:start + 1234], payload=payload[start:start + 1234])
    spill.close()
    indptr = bucket_sort(spill, "key", np.bincount(keys, minlength=50),
                         {"key": tmp_path / "k.npy", "payload": tmp_path / "p.npy"}, chunk=777)
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), payload[order])
    np.testing.assert_array_equal(indptr, np.r_[0, np.cumsum(np.bincount(keys, minlength=50))])


def test_validation_and_test_halves_are_disjoint_matched_and_leave_the_test_half_unchanged() -> None:
    rng = np.random.default_rng(3)
    proteins = np.sort(rng.choice(5000, size=800, replace=False)).astype(np.int64)
    values = rng.uniform(0.01, 1.0, size=800).astype(np.float32)
    sizes = ExampleSizes(n_heldout=24, n_validation=24)
    chosen = select(proteins, values, 5000, sizes, np.random.default_rng([0, 7]))
    test = chosen.proteins[chosen.kinds == KIND_HELDOUT]
    validation = chosen.proteins[chosen.kinds == KIND_VALIDATION]
    examples = chosen.proteins[chosen.kinds < KIND_HELDOUT]
    assert len(test) == len(validation) == 24
    assert not set(test) & set(validation) and not (set(test) | set(validation)) & set(examples)
    for half in (KIND_HELDOUT, KIND_VALIDATION):  # both halves hold firing and silent proteins alike
        vals = chosen.values[chosen.kinds == half]
        assert (vals == 0).sum() > 0 and (vals > 0).sum() > 0
    silent_counts = [(chosen.values[chosen.kinds == h] == 0).sum() for h in (KIND_HELDOUT, KIND_VALIDATION)]
    assert abs(int(silent_counts[0]) - int(silent_counts[1])) <= 1
    # the test half is what it was before the split existed (same draws): today's scorer is unchanged
    before = select(proteins, values, 5000, ExampleSizes(n_heldout=24, n_validation=0),
                    np.random.default_rng([0, 7]))
    assert before.proteins[before.kinds == KIND_HELDOUT].tolist() == test.tolist()
