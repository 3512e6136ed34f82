from __future__ import annotations

import math

import pytest

from agent.score import is_validated, pearson, rankdata, score, spearman


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], 1.0),
        ([1, 2, 3], [3, 2, 1], -1.0),
        # by hand: dx = dy = (-1.5, -0.5, 0.5, 1.5) permuted; sum dx*dy = 3, sum dx^2 = sum dy^2 = 5
        ([1, 2, 3, 4], [2, 1, 4, 3], 0.6),
        # dx = (-5, -5, 5, 5), dy = (-4, -5, 4, 5): sum dx*dy = 90, sum dx^2 = 100, sum dy^2 = 82
        ([0, 0, 10, 10], [1, 0, 9, 10], 90 / math.sqrt(100 * 82)),
    ],
)
def test_pearson_known_values(x, y, expected):
    assert pearson(x, y) == pytest.approx(expected, abs=1e-12)


def test_pearson_is_scale_and_shift_free():
    x, y = [0.0, 3.0, 1.0, 8.0, 2.0], [0.1, 0.5, 0.2, 0.9, 0.0]
    assert pearson(x, [10 * v + 3 for v in y]) == pytest.approx(pearson(x, y))


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert rankdata([7, 7, 7]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_with_ties_by_hand():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): sum dx*dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_spearman_sees_monotone_non_linear_as_perfect():
    x = [1, 2, 3, 4, 5]
    assert spearman(x, [v**3 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [v**3 for v in x]) < 0.99


@pytest.mark.parametrize(("x", "y"), [([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [0, 0, 0]), ([5], [5]), ([], [])])
def test_undefined_correlations_are_none(x, y):
    assert pearson(x, y) is None
    assert spearman(x, y) is None


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="lengths"):
        pearson([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        pearson([1, float("nan"), 3], [1, 2, 3])


def test_validated_needs_threshold_and_enough_heldout():
    assert is_validated(0.5, 10, threshold=0.5, min_heldout=10)
    assert not is_validated(0.49, 10, threshold=0.5, min_heldout=10)
    assert not is_validated(0.9, 9, threshold=0.5, min_heldout=10)
    assert not is_validated(None, 100)


def test_score_bundles_everything():
    result = score([0, 0, 5, 10, 10, 0, 0, 5, 10, 0, 0, 1], [0, 0, 0.4, 1, 0.8, 0, 0.1, 0.5, 0.9, 0, 0, 0])
    assert result.n == 12
    assert result.pearson == pytest.approx(pearson([0, 0, 5, 10, 10, 0, 0, 5, 10, 0, 0, 1],
                                                   [0, 0, 0.4, 1, 0.8, 0, 0.1, 0.5, 0.9, 0, 0, 0]))
    assert result.validated
    constant = score([3] * 12, [0, 1] * 6)
    assert constant.pearson is None and not constant.validated


def test_a_feature_firing_alike_on_every_heldout_protein_is_not_validated():
    """Actuals 0.97..0.98: r is defined (and stored) but measures noise, so it never validates."""
    actual = [0.97 + 0.0005 * i for i in range(20)]
    predicted = [9.0 + 0.05 * i for i in range(20)]
    result = score(predicted, actual)
    assert result.pearson == pytest.approx(1.0)
    assert not result.validated
    spread_out = [0.05 * i for i in range(20)]
    assert score(predicted, spread_out).validated
