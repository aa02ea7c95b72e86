"""Tests of bondexp.stats: each statistic against a scipy or numpy reference, and its behaviour on drift's cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from bondexp import stats
from bondexp.stats import (
    KSReference,
    bootstrap_rmse_ci,
    chi2_pvalue,
    correct_pvalues,
    ks_pvalue,
    level_shift_test,
    population_stability_index,
    psi_from_counts,
    quantile_edges,
    sample_drift,
    split_by_month,
    volatility_test,
)
from series import ar1, ar1_with_turbulence

# --- PSI ------------------------------------------------------------------------------------------


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20000)
    assert population_stability_index(reference, rng.normal(size=5000)) < 0.01
    assert population_stability_index(reference, rng.normal(0.5, 1, size=5000)) > 0.2


def test_psi_floor_keeps_empty_bins_finite_and_matches_the_formula():
    reference = np.arange(1000.0)
    current = np.full(50, 10.0)  # every value in the first of ten bins; nine bins empty
    psi = population_stability_index(reference, current, n_bins=10, psi_floor=1e-4)
    q = np.array([1.0] + [1e-4] * 9)
    q /= q.sum()
    p = np.full(10, 0.1)
    assert np.isfinite(psi)
    assert psi == pytest.approx(np.sum((q - p) * np.log(q / p)))
    assert population_stability_index(reference, current, psi_floor=1e-6) > psi  # a smaller floor: a larger index


def test_psi_of_an_empty_sample_is_nan():
    assert np.isnan(population_stability_index(np.arange(10.0), np.array([np.nan])))


# --- multiple testing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, expected",
    [
        ("holm", [0.03, 0.06, 0.06, 0.02]),  # sorted 0.005*4, 0.01*3, 0.03*2, max(0.04*1, 0.06)
        ("bonferroni", [0.04, 0.16, 0.12, 0.02]),
        ("none", [0.01, 0.04, 0.03, 0.005]),
    ],
)
def test_correction_matches_the_hand_computed_values(method, expected):
    np.testing.assert_allclose(correct_pvalues(np.array([0.01, 0.04, 0.03, 0.005]), method=method), expected)


def test_correction_skips_nan_caps_at_one_and_treats_columns_as_families():
    p = np.array([[0.01, 0.5], [np.nan, 0.6], [0.02, 0.001]])
    out = correct_pvalues(p, method="holm")
    np.testing.assert_allclose(out[:, 0], [0.02, np.nan, 0.02])  # two tested values in the first column
    np.testing.assert_allclose(out[:, 1], [1.0, 1.0, 0.003])
    holm, bonferroni = correct_pvalues(p, method="holm"), correct_pvalues(p, method="bonferroni")
    assert np.all((holm <= bonferroni) | np.isnan(p))


def test_unknown_correction_names_the_parameter():
    with pytest.raises(ValueError, match=r"'method' parameter of correct_pvalues must be one of \['holm'"):
        correct_pvalues(np.array([0.1]), method="bh")


# --- monthly series ------------------------------------------------------------------------------


def test_a_stationary_ar1_level_is_not_a_shift_but_two_sd_are():
    """48 training and 12 test months: a persistent AR(1) (phi 0.9) wanders far over 12 months."""
    train, test = np.arange(48), np.arange(48, 60)
    null_p, shifted_p = [], []
    for seed in range(20):
        persistent = ar1(np.random.default_rng(seed), 60, 0.9)
        null_p.append(level_shift_test(persistent[:48], train, persistent[48:], test)["pvalue"])
        x = ar1(np.random.default_rng(seed), 60, 0.3)
        shifted_p.append(level_shift_test(x[:48], train, x[48:] + 2.0, test)["pvalue"])
    assert sum(p < 0.05 for p in null_p) <= 2
    assert sum(p < 0.05 for p in shifted_p) >= 17


def test_level_shift_scale_accounts_for_autocorrelation():
    x = ar1(np.random.default_rng(3), 60, 0.9)
    result = level_shift_test(x[:48], np.arange(48), x[48:], np.arange(48, 60))
    assert result["phi"] > 0.7
    naive = result["shift"] / (x[:48].std(ddof=1) * np.sqrt(1 / 48 + 1 / 12))
    assert abs(result["z"]) < abs(naive)


def test_a_validation_gap_widens_the_null():
    x = ar1(np.random.default_rng(5), 48, 0.8)
    current = np.full(6, x[:36].mean() + 1.0)
    adjacent = level_shift_test(x[:36], np.arange(36), current, np.arange(36, 42))
    gapped = level_shift_test(x[:36], np.arange(36), current, np.arange(48, 54))
    assert abs(gapped["z"]) < abs(adjacent["z"])


def test_volatility_test_finds_turbulence_but_not_persistence_or_calm():
    train, test = np.arange(48), np.arange(48, 60)
    null_p, turbulent_p, calm_p = [], [], []
    for seed in range(20):
        x = ar1(np.random.default_rng(seed), 60, 0.95)
        null_p.append(volatility_test(x[:48], train, x[48:], test)["pvalue"])
        y = ar1_with_turbulence(np.random.default_rng(seed), 60, 0.95, start=48, factor=2.5)
        turbulent_p.append(volatility_test(y[:48], train, y[48:], test)["pvalue"])
        z = ar1_with_turbulence(np.random.default_rng(seed), 60, 0.95, start=48, factor=0.4)
        calm_p.append(volatility_test(z[:48], train, z[48:], test)["pvalue"])
    assert sum(p < 0.05 for p in null_p) <= 2
    assert sum(p < 0.05 for p in turbulent_p) >= 17
    assert sum(p < 0.05 for p in calm_p) == 0  # one-sided: a calmer market is no alarm


def test_volatility_test_counts_only_consecutive_months():
    result = volatility_test(np.array([0.0, 1.0, 0.0, 1.0]), np.array([0, 1, 2, 3]), np.array([0.0, 9.0]), np.array([10, 12]))
    assert np.isnan(result["pvalue"])  # the two current months are not adjacent: no change to test


# --- references -----------------------------------------------------------------------------------


def test_psi_matches_a_histogram_on_the_reference_deciles():
    rng = np.random.default_rng(7)
    reference, current = rng.normal(size=4000), rng.normal(0.3, 1.2, size=1500)
    edges = np.quantile(reference, np.linspace(0, 1, 11))
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.histogram(reference, edges)[0] / len(reference)
    q = np.histogram(current, edges)[0] / len(current)
    assert population_stability_index(reference, current, n_bins=10) == pytest.approx(np.sum((q - p) * np.log(q / p)), rel=1e-9)


def test_quantile_edges_are_the_interior_quantiles_and_ties_merge():
    x = np.random.default_rng(0).normal(size=1000)
    np.testing.assert_array_equal(quantile_edges(x, n_bins=4), np.quantile(x, [0.25, 0.5, 0.75]))
    np.testing.assert_array_equal(quantile_edges(np.array([0.0] * 95 + [1.0] * 5), n_bins=10), [0.0])  # nine equal deciles: one edge


def test_psi_from_counts_handles_many_samples_and_an_empty_one():
    ref = np.array([10, 20, 30])
    many = np.array([[10, 20, 30], [30, 20, 10], [0, 0, 0]])
    out = psi_from_counts(ref, many, psi_floor=1e-4)
    assert out[0] == pytest.approx(0.0, abs=1e-12)
    assert out[1] == pytest.approx(float(psi_from_counts(ref, many[1], psi_floor=1e-4)))
    assert np.isnan(out[2])


def _holm_by_hand(p):
    """Holm's step-down adjusted p-values, one loop per rank (the textbook definition)."""
    order = np.argsort(p)
    m, out, running = len(p), np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min((m - rank) * p[i], 1.0))
        out[i] = running
    return out


def test_holm_and_bonferroni_match_the_definitions_on_random_families():
    rng = np.random.default_rng(11)
    for m in (1, 2, 5, 19, 40):
        p = rng.uniform(0, 0.2, m) ** 2
        np.testing.assert_allclose(correct_pvalues(p, method="holm"), _holm_by_hand(p), rtol=1e-12)
        np.testing.assert_allclose(correct_pvalues(p, method="bonferroni"), np.minimum(p * m, 1.0), rtol=1e-12)


def test_holm_matches_statsmodels_when_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(12).uniform(0, 0.1, 25)
    for method in ("holm", "bonferroni"):
        np.testing.assert_allclose(correct_pvalues(p, method=method), multitest.multipletests(p, method=method)[1], rtol=1e-12)


def test_holm_is_not_benjamini_hochberg():
    p = np.array([0.01, 0.02, 0.03, 0.04])
    assert np.all(correct_pvalues(p, method="holm") >= sps.false_discovery_control(p, method="bh"))
    assert not np.allclose(correct_pvalues(p, method="holm"), sps.false_discovery_control(p, method="bh"))


def test_two_sided_ks_equals_scipy_at_full_sizes_and_uses_the_effective_sizes():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=600), rng.normal(0.1, 1, size=400)
    assert ks_pvalue(a, b) == pytest.approx(sps.ks_2samp(a, b, method="asymp").pvalue, rel=1e-12)
    d = sps.ks_2samp(a, b).statistic
    n1, n2 = 600 * 0.25, 400 * 0.5
    assert ks_pvalue(a, b, shares=(0.25, 0.5)) == pytest.approx(sps.kstwo.sf(d, round(n1 * n2 / (n1 + n2))), rel=1e-12)
    assert ks_pvalue(a, b, shares=(0.25, 0.5)) > ks_pvalue(a, b)  # fewer independent draws: weaker evidence


def test_one_sided_ks_asks_whether_current_is_larger():
    rng = np.random.default_rng(4)
    reference = np.abs(rng.normal(size=2000))
    larger, smaller = np.abs(rng.normal(0, 1.3, size=2000)), np.abs(rng.normal(0, 0.7, size=2000))
    assert ks_pvalue(reference, larger, larger=True) < 1e-6
    assert ks_pvalue(reference, smaller, larger=True) > 0.5
    scipy_p = sps.ks_2samp(reference, larger, alternative="greater", method="asymp").pvalue
    assert np.log(ks_pvalue(reference, larger, larger=True)) == pytest.approx(np.log(scipy_p), rel=0.05)
    assert np.isnan(ks_pvalue(reference, np.array([])))


@pytest.mark.parametrize("larger", [False, True])
def test_sorted_reference_gives_scipys_statistic_bit_for_bit(larger):
    """The monthly tests reuse one sorted reference; ties, shifts and tiny samples included."""
    rng = np.random.default_rng(5)
    reference = np.round(rng.normal(size=3000), 1)  # many ties, inside and across the samples
    sorted_reference = KSReference(reference)
    alternative = "greater" if larger else "two-sided"
    for current in (
        np.round(rng.normal(0.3, 1.2, size=700), 1),
        np.round(rng.normal(-0.3, 0.8, size=50), 2),
        rng.normal(size=1),
        reference[:10],
        np.full(5, reference.max() + 1.0),
    ):
        expected = sps.ks_2samp(reference, current, alternative=alternative, method="asymp").statistic
        assert sorted_reference.statistic(current, larger=larger) == expected
        assert ks_pvalue(sorted_reference, current, larger=larger) == ks_pvalue(reference, current, larger=larger)


def test_chi2_equals_scipy_at_full_sizes_drops_empty_categories_and_scales_rows():
    table = np.array([[30, 50, 0, 20], [10, 40, 0, 50]])
    expected = sps.chi2_contingency(table[:, [0, 1, 3]]).pvalue
    assert chi2_pvalue(table) == pytest.approx(expected, rel=1e-12)
    scaled = sps.chi2_contingency(table[:, [0, 1, 3]] * np.array([[0.5], [0.2]])).pvalue
    assert chi2_pvalue(table, shares=(0.5, 0.2)) == pytest.approx(scaled, rel=1e-12)
    assert chi2_pvalue(np.array([[5, 0], [7, 0]])) == 1.0
    assert np.isnan(chi2_pvalue(np.array([[5, 3], [0, 0]])))


def test_level_shift_variance_is_the_ar1_covariance_of_the_mean_difference():
    x = ar1(np.random.default_rng(8), 40, 0.6)
    ref_months, cur_months = np.arange(30), np.arange(34, 40)  # a gap of four months
    result = level_shift_test(x[:30], ref_months, x[34:] + 0.5, cur_months)
    months = np.concatenate([ref_months, cur_months])
    weights = np.concatenate([np.full(30, -1 / 30), np.full(6, 1 / 6)])
    covariance = result["sd"] ** 2 * result["phi"] ** np.abs(months[:, None] - months[None, :])
    z = result["shift"] / np.sqrt(weights @ covariance @ weights)
    assert result["z"] == pytest.approx(z, rel=1e-10)
    assert result["pvalue"] == pytest.approx(2 * sps.t.sf(abs(z), result["df"]), rel=1e-10)
    assert result["df"] == pytest.approx(max(30 * (1 - result["phi"]) / (1 + result["phi"]) - 1, 2.0))


def test_level_shift_needs_three_reference_months():
    result = level_shift_test(np.array([1.0, 2.0]), np.array([0, 1]), np.array([5.0]), np.array([2]))
    assert np.isnan(result["pvalue"]) and result["shift"] == pytest.approx(3.5)


def test_volatility_test_is_the_one_sided_f_test_of_the_changes():
    rng = np.random.default_rng(9)
    ref, cur = rng.normal(size=30).cumsum(), (2 * rng.normal(size=12)).cumsum()
    ref_changes, cur_changes = np.diff(ref), np.diff(cur)
    f = np.var(cur_changes, ddof=1) / np.var(ref_changes, ddof=1)
    result = volatility_test(ref, np.arange(30), cur, np.arange(40, 52))
    assert result["ratio"] == pytest.approx(np.sqrt(f), rel=1e-12)
    assert result["pvalue"] == pytest.approx(sps.f.sf(f, 10, 28), rel=1e-12)  # 11 and 29 changes


def test_split_by_month_groups_in_month_order_and_keeps_row_order():
    values, month = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2, 0, 2, 0, 1])
    chunks = split_by_month(values, month, 4)
    assert [list(c) for c in chunks] == [[2.0, 4.0], [5.0], [1.0, 3.0], []]


def test_sample_drift_monthly_values_are_the_statistics_of_each_month():
    rng = np.random.default_rng(10)
    reference, current = rng.normal(size=900), rng.normal(0.2, 1, size=300)
    month = np.repeat(np.arange(3), 100)
    psi, p, m_psi, m_p = sample_drift(reference, current, month, 3, categorical=False, n_bins=10, psi_floor=1e-4, shares=(1.0, 1.0))
    assert psi == pytest.approx(population_stability_index(reference, current))
    assert p == pytest.approx(ks_pvalue(reference, current))
    for k in range(3):
        chunk = current[month == k]
        assert m_psi[k] == pytest.approx(population_stability_index(reference, chunk))
        assert m_p[k] == pytest.approx(ks_pvalue(reference, chunk))


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(13)
    sq = rng.exponential(1.0, 400)
    ours = bootstrap_rmse_ci(sq, n_bootstrap=2000, confidence=0.9, seed=0)
    theirs = sps.bootstrap(
        (sq,), lambda s: np.sqrt(np.mean(s)), n_resamples=2000, confidence_level=0.9, method="percentile", vectorized=False, random_state=0
    ).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), rel=0.02)


def test_bootstrap_chunks_give_the_same_shape_of_answer(monkeypatch):
    rng = np.random.default_rng(2)
    sq = rng.exponential(1.0, 500)
    whole = bootstrap_rmse_ci(sq, n_bootstrap=400, confidence=0.9, seed=0)
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK", 1000)  # two resamples per chunk
    chunked = bootstrap_rmse_ci(sq, n_bootstrap=400, confidence=0.9, seed=0)
    assert chunked[0] < np.sqrt(sq.mean()) < chunked[1]
    assert chunked == pytest.approx(whole, rel=0.05)
    assert np.isnan(bootstrap_rmse_ci(np.array([]), n_bootstrap=10, confidence=0.9, seed=0)[0])


def test_bootstrap_of_several_samples_resamples_each_with_the_same_rows():
    rng = np.random.default_rng(5)
    sq = rng.exponential(1.0, (3, 700))
    low, high = bootstrap_rmse_ci(sq, n_bootstrap=300, confidence=0.9, seed=1)
    # the old way: gather each sample's rows per resample, with the same draws
    draws = np.random.default_rng(1).integers(0, 700, size=(300, 700))
    for k in range(3):
        means = np.sqrt(sq[k][draws].mean(axis=1))
        assert (low[k], high[k]) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])), rel=1e-12)
    assert bootstrap_rmse_ci(sq[1], n_bootstrap=300, confidence=0.9, seed=1) == pytest.approx((low[1], high[1]), rel=1e-12)
    empty_low, empty_high = bootstrap_rmse_ci(np.empty((2, 0)), n_bootstrap=10, confidence=0.9, seed=0)
    assert np.isnan(empty_low).all() and np.isnan(empty_high).all() and empty_low.shape == (2,)


def test_the_bootstrap_interval_does_not_depend_on_the_blas_thread_count():
    """A matrix product on two BLAS threads changed the interval's last bits: `workers=1` (a step on two threads)
    and `workers=2` (one each) gave different `rmse_ci_*` in the leaderboard."""
    from threadpoolctl import threadpool_limits

    sq_errors = np.random.default_rng(0).gamma(1.0, size=(10, 9932))  # a default run's test split, ten models
    found = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            found.append(bootstrap_rmse_ci(sq_errors, n_bootstrap=500, confidence=0.95, seed=0))
    for one, two in zip(*found, strict=True):
        np.testing.assert_array_equal(one, two)
