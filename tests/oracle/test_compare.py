"""The comparison engine: NaN/Inf positions before values, counts, indices, patterns, round trip."""
from __future__ import annotations

import numpy as np
import pytest

from qkcheck.oracle.compare import Divergence, compare, describe_pattern


def test_equal_arrays_within_zero_bound_pass():
    a = np.arange(12.0).reshape(3, 4)
    assert compare(a, a.copy(), 0.0) is None


def test_nan_where_a_number_is_expected_fails_whatever_the_bound():
    e = np.ones((2, 2))
    a = e.copy()
    a[1, 0] = np.nan
    d = compare(a, e, np.inf)
    assert d is not None and d.count == 1 and d.nonfinite_mismatches == 1
    assert d.first_indices == [(1, 0)]


def test_inf_sign_mismatch_is_a_violation():
    e = np.array([[np.inf, 1.0]])
    a = np.array([[-np.inf, 1.0]])
    assert compare(a, e, 1.0).count == 1


def test_counts_fraction_max_error_and_ratio():
    e = np.zeros((4, 4))
    a = e.copy()
    a[2, 3] = 0.5
    a[0, 1] = -0.25
    d = compare(a, e, 0.1)
    assert (d.count, d.total) == (2, 16)
    assert d.fraction == pytest.approx(2 / 16)
    assert d.max_abs_error == 0.5 and d.worst_index == (2, 3)
    assert d.max_ratio == pytest.approx(5.0)
    assert d.first_indices == [(0, 1), (2, 3)]


def test_exact_regime_ratio_is_in_units():
    d = compare(np.array([[3.0]]), np.array([[1.0]]), 0.0, unit=np.array([[0.5]]))
    assert d.bound_kind == "exact" and d.max_ratio == pytest.approx(4.0)


@pytest.mark.parametrize(
    "rows,want",
    [
        pytest.param(np.arange(64) % 64 >= 32, "rows 32..63 (32 of 64)", id="one-band"),
        pytest.param((np.arange(128) % 64) >= 32, "rows with row mod 64 in 32..63 (64 of 128)", id="periodic-band"),
        pytest.param(np.arange(16) % 2 == 1, "rows with row mod 2 in 1 (8 of 16)", id="odd"),
        pytest.param(np.ones(5, bool), "all 5 rows", id="all"),
        pytest.param(np.isin(np.arange(40), [3, 17]), "rows 3, 17 (2 of 40)", id="few"),
    ],
)
def test_pattern_sentences(rows, want):
    assert describe_pattern(rows, ("row",)) == want


def test_divergence_round_trips_through_a_dict():
    e = np.zeros((70, 130))
    a = e.copy()
    a[::2, 5] = 1.0
    d = compare(a, e, 0.5)
    assert len(d.heatmap) <= 64 and len(d.heatmap[0]) <= 64
    assert Divergence.from_dict(d.to_dict()) == d


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"actual has shape \(2,\) but expected has shape \(3,\)"):
        compare(np.zeros(2), np.zeros(3), 0.0)


def test_compare_and_divergence_are_the_package_api():
    from qkcheck.oracle import Divergence as PackageDivergence
    from qkcheck.oracle import compare as package_compare

    assert package_compare is compare and PackageDivergence is Divergence
    d = package_compare(np.array([[1.0, 2.0]]), np.array([[1.0, 3.0]]), 0.0, unit=1.0)
    assert isinstance(d, Divergence) and d.count == 1
