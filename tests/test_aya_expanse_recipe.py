"""The Aya-Expanse-style chain end to end on the tiny model: SFT on every language, DPO on language-family
branches, a merge, per-language win-rates; the branches keep the corpus' held-out rows apart."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from aya_train.cli import main
from aya_train.pipeline import DataCache
from aya_train.recipe import compose_recipe


BRANCH_RECIPE = """
defaults:
  - /aya_train
  - /model: tiny
  - /data@data.sft: chatterbot
  - /data@data.branch: chatterbot
  - /stage@stages.sft: sft
  - _self_
data:
  branch: {languages: [French, de, spa]}
stages:
  sft: {data: branch}
"""


def test_language_family_branch_keeps_the_full_sets_held_out_rows(cache_dir, tmp_path):
    recipe = tmp_path / "branch.yaml"
    recipe.write_text(BRANCH_RECIPE)
    cfg = compose_recipe(str(recipe), [f"run.cache_dir={cache_dir}"])
    data = DataCache(cfg)
    full, branch = data("sft"), data("branch")
    assert set(branch.train["language"]) == set(branch.eval["language"]) == {"fr", "de", "es"}
    full_eval = {i for i, lang in zip(full.eval["id"], full.eval["language"]) if lang in {"fr", "de", "es"}}
    assert set(branch.eval["id"]) == full_eval  # the same held-out rows: no branch trains on another's eval rows
    assert not set(branch.train["id"]) & set(full.eval["id"])
    rows = Counter(full.train["language"]) + Counter(full.eval["language"])
    left_out = sum(n for lang, n in rows.items() if lang not in {"fr", "de", "es"})
    assert branch.summary.excluded["language not in the data set's `languages`"] == left_out


def test_real_size_recipe_composes():
    cfg = compose_recipe("aya-expanse")
    assert cfg.model.name_or_path == "CohereLabs/aya-expanse-8b"
    assert list(cfg.stages) == ["sft", "reward", "dpo_european", "dpo_slavic_greek", "dpo_asian", "merged", "evaluate",
                                "export"]
    assert cfg.stages.merged.models == ["dpo_european", "dpo_slavic_greek", "dpo_asian"]
    families = [set(cfg.data[name].languages) for name in ("european", "slavic_greek", "asian")]
    assert set().union(*families) == set(cfg.data.all.languages) and sum(map(len, families)) == 23


@pytest.fixture(scope="module")
def expanse_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("expanse")
    started = time.monotonic()
    assert main(["recipe=aya-expanse-tiny", f"run.output_dir={out}", f"run.cache_dir={cache_dir}"]) == 0
    return out / "aya-expanse-tiny", time.monotonic() - started


@pytest.mark.slow  # the whole chain, seven stages on a shrunk tiny model: ~1 min on 2 cores
def test_tiny_chain_runs_from_sft_through_merge_to_evaluation(expanse_run):
    run_dir, seconds = expanse_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = ("sft", "reward", "dpo_european", "dpo_asian", "merged", "evaluate", "export")
    assert [manifest["stages"][s]["status"] for s in stages] == ["done"] * len(stages)
    results = json.loads((run_dir / "evaluate" / "win_rates.json").read_text())
    assert list(results["models"]) == ["sft", "dpo_european", "dpo_asian", "merged"]
    assert results["judge"] == "reward" and results["baseline"] == "sft"
    assert len(results["prompts_per_language"]) >= 20
    for name, entry in results["models"].items():
        for lang, r in entry["win_rates"].items():
            assert 0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1, (name, lang, r)
        assert set(entry["language_fidelity"]) == set(results["prompts_per_language"])
    assert all(r["win_rate"] == 0.5 for r in results["models"]["sft"]["win_rates"].values())
    assert (run_dir / "evaluate" / "win_rates.png").is_file() and (run_dir / "evaluate" / "win_rates.md").is_file()
    # The exported merged model's card carries the evaluation; report.md shows the chart.
    card = next((run_dir / "export").rglob("README.md")).read_text()
    assert "Stage `evaluate` (evaluate)" in card and "merged win_rate" in card
    assert "evaluate/win_rates.png" in (run_dir / "report.md").read_text()
    print(f"aya-expanse-tiny: {seconds:.1f} s; merged vs sft: {results['models']['merged']['win_rates']['all']}")


def test_tiny_merge_is_the_average_of_the_branches(expanse_run):
    run_dir, _ = expanse_run
    merged = load_file(str(run_dir / "merged" / "final" / "model.safetensors"))
    a = load_file(str(run_dir / "dpo_european" / "final" / "model.safetensors"))
    b = load_file(str(run_dir / "dpo_asian" / "final" / "model.safetensors"))
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the branches really differ
    for name in a:
        assert torch.allclose(merged[name], (a[name] + b[name]) / 2, atol=1e-6), name


def test_tiny_branches_train_only_their_family(expanse_run):
    run_dir, _ = expanse_run
    cfg = compose_recipe("aya-expanse-tiny")
    for stage, data in (("dpo_european", "european"), ("dpo_asian", "asian")):
        trained = set(json.loads((run_dir / stage / "languages.json").read_text()))
        assert trained and trained <= set(cfg.data[data].languages), (stage, trained)
