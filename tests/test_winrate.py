"""Win-rates with bootstrap intervals: hand-computed values, a model against itself sits at 0.5 inside its
interval (and the 95% interval covers the truth about 95% of the time), intervals shrink with more prompts."""

from __future__ import annotations

import numpy as np
import pytest

from aya_train.metrics.winrate import ALL, metrics, win_rates


def test_hand_computed_rates_and_counts():
    rates = win_rates([1, 0, 0.5, 1, 0, 0], ["fr", "fr", "fr", "fr", "sw", "sw"], seed=0)
    assert rates["fr"].win_rate == pytest.approx(0.625)
    assert (rates["fr"].wins, rates["fr"].ties, rates["fr"].losses, rates["fr"].prompts) == (2, 1, 1, 4)
    assert rates["sw"].win_rate == 0.0 and rates["sw"].ci_low == rates["sw"].ci_high == 0.0
    # Overall: every language counts once (0.625 + 0) / 2, not pooled over prompts (2.5 / 6).
    assert rates[ALL].win_rate == pytest.approx(0.3125)
    for r in rates.values():
        assert r.ci_low <= r.win_rate <= r.ci_high


def test_all_ties_is_exactly_half():
    rates = win_rates([0.5] * 30, ["hi"] * 10 + ["ja"] * 20, seed=3)
    for r in rates.values():
        assert r.win_rate == r.ci_low == r.ci_high == 0.5 and r.ties == r.prompts


def _self_vs_self(rng, n_per_language, languages=("ar", "hi", "sw")):
    """A model against itself: both sides' scores drawn from one distribution; equal scores tie."""
    outcomes, langs = [], []
    for lang in languages:
        a, b = rng.integers(0, 5, n_per_language), rng.integers(0, 5, n_per_language)  # coarse: ties happen
        outcomes += list(np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0)))
        langs += [lang] * n_per_language
    return outcomes, langs


def test_self_vs_self_interval_covers_half():
    outcomes, langs = _self_vs_self(np.random.default_rng(42), 150)
    rates = win_rates(outcomes, langs, seed=42)
    for lang, r in rates.items():
        assert abs(r.win_rate - 0.5) < 0.1, (lang, r)
        assert r.ci_low <= 0.5 <= r.ci_high, (lang, r)


def test_interval_coverage_is_about_95_percent():
    """Across 200 independent self-vs-self experiments the 95% interval contains 0.5 in about 95% of them."""
    rng = np.random.default_rng(0)
    covered = {"ar": 0, ALL: 0}
    runs = 200
    for i in range(runs):
        outcomes, langs = _self_vs_self(rng, 60)
        rates = win_rates(outcomes, langs, samples=400, seed=i)
        for key in covered:
            covered[key] += rates[key].ci_low <= 0.5 <= rates[key].ci_high
    for key, hits in covered.items():
        assert 0.89 <= hits / runs <= 0.995, (key, hits / runs)


def test_interval_shrinks_as_prompts_grow():
    rng = np.random.default_rng(7)
    widths = []
    for n in (25, 100, 400):
        outcomes = list(rng.binomial(1, 0.6, n).astype(float))
        r = win_rates(outcomes, ["ta"] * n, seed=1)["ta"]
        widths.append(r.ci_high - r.ci_low)
    # Width ~ 1 / sqrt(n): each 4x more prompts roughly halves it.
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 3


def test_seeded_and_independent_of_other_languages_order():
    outcomes, langs = _self_vs_self(np.random.default_rng(1), 40)
    first = win_rates(outcomes, langs, seed=5)
    assert first == win_rates(outcomes, langs, seed=5)
    assert first["hi"] != win_rates(outcomes, langs, seed=6)["hi"]
    shuffled = list(reversed(range(len(outcomes))))
    again = win_rates([outcomes[i] for i in shuffled], [langs[i] for i in shuffled], seed=5)
    assert again["hi"].win_rate == first["hi"].win_rate


def test_metric_names():
    keys = metrics(win_rates([1, 0, 1, 0.5], ["fr", "fr", "yo", "yo"]))
    assert set(keys) == {"eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high",
                         "eval/win_rate/fr", "eval/win_rate_ci_low/fr", "eval/win_rate_ci_high/fr",
                         "eval/win_rate/yo", "eval/win_rate_ci_low/yo", "eval/win_rate_ci_high/yo"}


@pytest.mark.parametrize("outcomes, langs, match", [
    ([1, 2], ["a", "a"], r"\[0, 1\]"), ([1], ["a", "b"], "pair up"), ([], [], "no outcomes"),
])
def test_bad_outcomes(outcomes, langs, match):
    with pytest.raises(ValueError, match=match):
        win_rates(outcomes, langs)
