"""The mixture plan realises the README's formulas: temperature, weights, fixed shares, caps with
redistribution, budgets in examples and tokens; deterministic for a seed and identical on every rank."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aya_train.config import MixtureConfig, MixtureLevelConfig
from aya_train.data.mixture import MixtureError, check_mixture, plan_mixture

SIZES = {"aa": 8000, "bb": 2000, "cc": 500, "dd": 100}  # rows per language (one source, one task)


def labels(sizes=SIZES, source="s", task="t", shuffle_seed=1):
    """Rows in a shuffled order (a plan must not depend on row order)."""
    langs = np.repeat(np.array(list(sizes)), list(sizes.values()))
    np.random.default_rng(shuffle_seed).shuffle(langs)
    n = len(langs)
    return {"source": [source] * n, "language": list(langs), "task": [task] * n}


def mixture(budget=10_000, unit="examples", **language):
    return MixtureConfig(budget=budget, unit=unit, language=MixtureLevelConfig(**language))


def realised_by_language(plan, units=True):
    out = {}
    values = plan.realised_units if units else plan.realised_rows
    for (_, lang, _), v in zip(plan.groups, values):
        out[lang] = out.get(lang, 0) + float(v)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def expected(alpha, weights=None, shares=None):
    weights, shares = weights or {}, shares or {}
    free = {k: weights.get(k, 1.0) * n ** alpha for k, n in SIZES.items() if k not in shares}
    rest = 1 - sum(shares.values())
    return {**{k: rest * v / sum(free.values()) for k, v in free.items()}, **shares}


def assert_shares(got, want, tol=0.005):
    assert set(got) == set(want)
    for k in want:
        assert abs(got[k] - want[k]) <= tol, (k, got[k], want[k])


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_temperature_shares(alpha):
    plan = plan_mixture(labels(), mixture(alpha=alpha), seed=0)
    assert_shares(realised_by_language(plan), expected(alpha))
    assert plan.realised_rows.sum() == 10_000


def test_alpha_zero_repeats_small_languages_and_downsamples_large_ones():
    plan = plan_mixture(labels(), mixture(alpha=0.0), seed=0)
    rows = {g[1]: (int(r), int(d)) for g, r, d in zip(plan.groups, plan.realised_rows, plan.distinct_rows)}
    assert rows["dd"] == (2500, 100)  # 25 epochs of 100 rows
    assert rows["aa"] == (2500, 2500)  # 2,500 distinct rows of 8,000, none repeated
    repeats = plan.repeats[np.asarray(labels()["language"]) == "aa"]
    assert set(np.unique(repeats)) == {0, 1}


def test_weights_multiply_the_temperature_rule():
    plan = plan_mixture(labels(), mixture(alpha=0.5, weights={"dd": 4.0}), seed=0)
    assert_shares(realised_by_language(plan), expected(0.5, weights={"dd": 4.0}))


def test_fixed_shares_and_the_rest_by_temperature():
    plan = plan_mixture(labels(), mixture(alpha=0.5, shares={"aa": 0.1, "dd": 0.3}), seed=0)
    assert_shares(realised_by_language(plan), expected(0.5, shares={"aa": 0.1, "dd": 0.3}))


def test_caps_redistribute_what_a_group_cannot_take():
    # uniform 2,500 each; dd capped at 2 x 100, cc at 2 x 500; the 8,800 left split evenly between aa and bb,
    # bb capped at 4,000; aa takes the rest: 4,800.
    plan = plan_mixture(labels(), mixture(alpha=0.0, max_epochs=2.0), seed=0)
    rows = {g[1]: int(r) for g, r in zip(plan.groups, plan.realised_rows)}
    assert rows == {"aa": 4800, "bb": 4000, "cc": 1000, "dd": 200}
    assert {g[1] for g, c in zip(plan.groups, plan.capped) if c} == {"bb", "cc", "dd"}
    assert plan.repeats.max() == 2


def test_budget_beyond_every_cap_is_reported_not_exceeded():
    plan = plan_mixture(labels(), mixture(budget=100_000, alpha=1.0, max_epochs=1.0), seed=0)
    assert plan.reachable == pytest.approx(sum(SIZES.values())) and plan.budget == 100_000
    assert plan.is_identity


def test_natural_size_by_default_uses_every_row_once():
    plan = plan_mixture(labels(), MixtureConfig(), seed=0)
    assert plan.is_identity and plan.budget == sum(SIZES.values())
    assert np.array_equal(plan.indices, np.arange(sum(SIZES.values())))


def test_levels_compose_source_then_language():
    # source a: 9,000 rows in two languages; source b: 1,000 rows; source shares fixed 50/50, then languages
    # uniform inside each source (alpha 0): every (source, language) pair gets 1/2 * 1/2 of 4,000.
    lab = {k: labels({"en": 8000, "sw": 1000}, source="a")[k] + labels({"en": 500, "sw": 500}, source="b")[k]
           for k in ("source", "language", "task")}
    cfg = MixtureConfig(budget=4000, source=MixtureLevelConfig(shares={"a": 0.5, "b": 0.5}),
                        language=MixtureLevelConfig(alpha=0.0))
    plan = plan_mixture(lab, cfg, seed=0)
    assert {g[:2]: int(r) for g, r in zip(plan.groups, plan.realised_rows)} == {
        ("a", "en"): 1000, ("a", "sw"): 1000, ("b", "en"): 1000, ("b", "sw"): 1000}
    # language first: the language level sees en = 8,500 vs sw = 1,500 rows across both sources
    cfg.levels = ["language", "source", "task"]
    cfg.source = MixtureLevelConfig()
    plan = plan_mixture(lab, cfg, seed=0)
    assert_shares(realised_by_language(plan), {"en": 0.5, "sw": 0.5})


def test_token_budget_is_met_within_one_row_and_shares_count_tokens():
    lab = labels()
    n = len(lab["language"])
    rng = np.random.default_rng(3)
    tokens = rng.integers(10, 400, size=n)
    budget = 300_000
    plan = plan_mixture(lab, mixture(budget=budget, unit="tokens", alpha=0.5), seed=0, sizes=tokens)
    realised = int((plan.repeats * tokens).sum())
    assert abs(realised - budget) <= tokens.max()
    langs = np.asarray(lab["language"])
    avail = {k: tokens[langs == k].sum() for k in SIZES}
    want = {k: v ** 0.5 for k, v in avail.items()}
    assert_shares(realised_by_language(plan), {k: v / sum(want.values()) for k, v in want.items()})


def test_plan_is_deterministic_and_follows_the_seed():
    a, b = plan_mixture(labels(), mixture(alpha=0.3), seed=5), plan_mixture(labels(), mixture(alpha=0.3), seed=5)
    assert a.digest == b.digest and np.array_equal(a.indices, b.indices)
    c = plan_mixture(labels(), mixture(alpha=0.3), seed=6)
    assert c.digest != a.digest and np.array_equal(c.realised_rows, a.realised_rows)


def test_plan_is_identical_across_ranks_and_hash_seeds(tmp_path):
    code = ("import json,numpy as np; from tests.test_mixture import labels, mixture; "
            "from aya_train.data.mixture import plan_mixture; "
            "p = plan_mixture(labels(), mixture(alpha=0.3, max_epochs=3.0), seed=11); print(p.digest)")
    digests = set()
    for rank in ("0", "1"):
        env = {**os.environ, "RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "PYTHONHASHSEED": str(17 + int(rank))}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert digests == {plan_mixture(labels(), mixture(alpha=0.3, max_epochs=3.0), seed=11).digest}


def test_bad_settings_name_the_key():
    with pytest.raises(MixtureError, match=r"data.x.mixture.language.shares must .* sum to at most 1"):
        check_mixture(mixture(shares={"aa": 0.7, "bb": 0.6}), where="data.x.mixture")
    with pytest.raises(MixtureError, match="levels must order all of"):
        check_mixture(MixtureConfig(levels=["language"]))
    with pytest.raises(MixtureError, match="unit must be one of examples, tokens"):
        check_mixture(MixtureConfig(unit="rows"))
    with pytest.raises(MixtureError, match="tokens but no token lengths"):
        plan_mixture(labels(), mixture(unit="tokens"), seed=0)


def test_readme_worked_example():
    sizes = {"en": 8000, "sw": 2000, "yo": 500, "th": 100}
    plan = plan_mixture(labels(sizes), mixture(alpha=0.5, max_epochs=4.0), seed=0)
    got = {g[1]: (int(r), int(d)) for g, r, d in zip(plan.groups, plan.realised_rows, plan.distinct_rows)}
    assert got == {"en": (5486, 5486), "sw": (2743, 2000), "yo": (1371, 500), "th": (400, 100)}
    assert np.allclose(sorted(plan.target), sorted([9600 * 89.4427 / 156.5248, 9600 * 44.7214 / 156.5248,
                                                    9600 * 22.3607 / 156.5248, 400]), atol=0.1)


def test_a_parent_takes_no_more_than_its_children_can():
    # source a: en 100 + sw 10 rows; b: en 1,000. Sources 50/50 of 1,000, languages uniform, at most 2 epochs:
    # a can take at most 2 x 100 + 2 x 10 = 220, so b gets the other 780; inside a, sw is capped at 20.
    lab = {k: labels({"en": 100, "sw": 10}, source="a")[k] + labels({"en": 1000}, source="b")[k]
           for k in ("source", "language", "task")}
    cfg = MixtureConfig(budget=1000, source=MixtureLevelConfig(shares={"a": 0.5, "b": 0.5}),
                        language=MixtureLevelConfig(alpha=0.0, max_epochs=2.0))
    plan = plan_mixture(lab, cfg, seed=0)
    assert {g[:2]: int(r) for g, r in zip(plan.groups, plan.realised_rows)} == {
        ("a", "en"): 200, ("a", "sw"): 20, ("b", "en"): 780}
    assert plan.realised_rows.sum() == 1000


def test_language_names_in_settings_are_normalised_and_checked():
    sizes = {"en": 800, "sw": 200}
    plan = plan_mixture(labels(sizes), mixture(budget=1000, shares={"Swahili": 0.5}), seed=0)
    assert_shares(realised_by_language(plan), {"en": 0.5, "sw": 0.5})
    with pytest.raises(MixtureError, match=r"mixture.language.weights: no language `yo` in the data.*en, sw"):
        plan_mixture(labels(sizes), mixture(weights={"yo": 2.0}), seed=0)
    with pytest.raises(MixtureError, match="no source `aya` in the data"):
        plan_mixture(labels(sizes), MixtureConfig(source=MixtureLevelConfig(weights={"aya": 2.0})), seed=0)


def test_loaded_and_mixed_demo_corpus_is_identical_across_processes(tmp_path):
    """The whole path (read, split, plan) in two processes with different ranks and hash seeds."""
    code = ("from aya_train.config import DataSetConfig, SourceConfig, MixtureConfig, MixtureLevelConfig; "
            "from aya_train.data.loading import load_data, DEMO_CORPUS; from aya_train.data.mixture import apply_mixture; "
            "ds = DataSetConfig(sources=[SourceConfig(path=DEMO_CORPUS, format='chatterbot')], "
            "mixture=MixtureConfig(budget=3000, language=MixtureLevelConfig(alpha=0.3, max_epochs=3.0))); "
            "d = load_data(ds, seed=3); apply_mixture(d, ds.mixture, seed=3); print(d.plan.digest, d.fingerprint)")
    outputs = set()
    for rank in ("0", "1"):
        env = {**os.environ, "RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "PYTHONHASHSEED": str(5 + int(rank))}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
        assert out.returncode == 0, out.stderr[-2000:]
        outputs.add(out.stdout.strip().splitlines()[-1])
    assert len(outputs) == 1
