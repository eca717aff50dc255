"""The Aya-Expanse-style chain: language-family branches of one corpus keep its held-out rows apart."""

from __future__ import annotations

from collections import Counter

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
