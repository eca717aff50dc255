"""Evaluate stage: held-out prompts per language, one generation set per model with the recorded sampling
settings, win-rates against a baseline judged by a reward model (a model against itself: 0.5, interval
covering 0.5), language fidelity, table + PNG + JSON in the stage folder; judges' position handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from aya_train.stage_config import EvaluateStageConfig
from aya_train.metrics.judge import EndpointJudge, RewardModelJudge, parse_verdict
from aya_train.pipeline import DataCache, process_state, run_dir_for
from aya_train.recipe import compose_recipe
from aya_train.stages import evaluate
from aya_train.stages.common import StageContext

PROMPT = [{"role": "user", "content": "Habari yako?"}]


@pytest.fixture(scope="module")
def run_layout(tiny_model, cache_dir, tmp_path_factory):
    """A run directory holding three finished stages: sft (the tiny model), its exact copy, a changed model,
    and a random-init reward model over the same tokenizer."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("eval-runs")
    cfg = compose_recipe("demo", [f"run.output_dir={out}", f"run.cache_dir={cache_dir}", "run.name=eval"])
    run_dir = run_dir_for(cfg)
    shutil.copytree(tiny_model, run_dir.final_dir("sft"))
    shutil.copytree(tiny_model, run_dir.final_dir("copy"))
    shutil.copytree(tiny_model, run_dir.final_dir("other"))
    weights = load_file(str(Path(tiny_model) / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in weights.items()},
              str(run_dir.final_dir("other") / "model.safetensors"), metadata={"format": "pt"})
    torch.manual_seed(0)
    judge = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    judge.save_pretrained(run_dir.final_dir("rm"))
    for item in Path(tiny_model).iterdir():
        if item.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy2(item, run_dir.final_dir("rm") / item.name)
    return cfg, run_dir


def _context(cfg, run_dir, name: str, **fields) -> StageContext:
    node = OmegaConf.structured(EvaluateStageConfig(
        baseline="sft", judge="rm", data="sft", max_prompts_per_language=3, bootstrap_samples=500, **fields))
    node.sampling.max_new_tokens = 12
    return StageContext(name=name, cfg=node, root=cfg, run_dir=run_dir, base_model=str(run_dir.final_dir("sft")),
                        load_data=DataCache(cfg), state=process_state())


@pytest.fixture(scope="module")
def evaluated(run_layout):
    cfg, run_dir = run_layout
    ctx = _context(cfg, run_dir, "evaluate", models=["copy", "other", "sft"])
    return ctx, evaluate.run(ctx)


def test_model_against_itself_is_half_with_interval_covering_half(evaluated):
    ctx, _ = evaluated
    results = json.loads((ctx.stage_dir / "win_rates.json").read_text())
    # `copy` has sft's exact weights and the same sampling seed: the same responses, a tie on every prompt.
    for name in ("copy", "sft"):
        for lang, r in results["models"][name]["win_rates"].items():
            assert r["win_rate"] == 0.5 and r["ci_low"] <= 0.5 <= r["ci_high"], (name, lang, r)
            assert r["ties"] == r["prompts"]


def test_changed_model_gets_real_outcomes_and_intervals(evaluated):
    ctx, _ = evaluated
    results = json.loads((ctx.stage_dir / "win_rates.json").read_text())
    rates = results["models"]["other"]["win_rates"]
    assert len(rates) >= 20  # the demo corpus' languages, plus `all`
    assert sum(r["wins"] + r["losses"] for r in rates.values()) > 0, "every pair tied: the judge never decided"
    for lang, r in rates.items():
        assert 0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1, (lang, r)
        assert r["wins"] + r["ties"] + r["losses"] == r["prompts"]
    per_lang = [r["win_rate"] for lang, r in rates.items() if lang != "all"]
    assert rates["all"]["win_rate"] == pytest.approx(sum(per_lang) / len(per_lang))
    outcomes = [json.loads(line) for line in (ctx.stage_dir / "outcomes" / "other.jsonl").read_text().splitlines()]
    assert {o["outcome"] for o in outcomes} <= {0.0, 0.5, 1.0}
    assert sum(o["language"] == "hi" for o in outcomes) == rates["hi"]["prompts"] <= 3


def test_outputs_record_sampling_and_fidelity(evaluated):
    ctx, result = evaluated
    results = json.loads((ctx.stage_dir / "win_rates.json").read_text())
    assert results["sampling"]["max_new_tokens"] == 12 and results["sampling"]["do_sample"] is True
    assert results["backend"] == "transformers" and results["judge"] == "rm" and results["baseline"] == "sft"
    for name in ("copy", "other", "sft"):
        fid = results["models"][name]["language_fidelity"]
        assert set(fid) == set(results["prompts_per_language"]) and all(0 <= v <= 1 for v in fid.values())
    assert results["models"]["copy"]["language_fidelity"] == results["models"]["sft"]["language_fidelity"]
    records = [json.loads(line) for line in (ctx.stage_dir / "metrics.jsonl").read_text().splitlines()]
    by_model = {rec["model"]: rec for rec in records}
    assert set(by_model) == {"copy", "other", "sft"}
    for key in ("eval/win_rate", "eval/win_rate/hi", "eval/win_rate_ci_low/hi", "eval/win_rate_ci_high/hi",
                "eval/language_fidelity/hi", "eval/language_fidelity"):
        assert key in by_model["other"], sorted(by_model["other"])[:10]
    generations = (ctx.stage_dir / "generations" / "other.jsonl").read_text().splitlines()
    assert len(generations) == sum(results["prompts_per_language"].values())
    assert (ctx.stage_dir / "win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (ctx.stage_dir / "win_rates.md").read_text()
    assert "| hi |" in table and "other win_rate" in table and "max_new_tokens" in table
    assert result.languages["hi"]["other win_rate"].count("[") == 1
    assert result.summary["copy"]["win_rate"] == 0.5


def test_held_out_prompts_drop_the_reply_and_cap_per_language(run_layout):
    cfg, _ = run_layout
    loaded = DataCache(cfg)("sft")
    held = evaluate.held_out_prompts(loaded, 2)
    assert max(held["language"].count(lang) for lang in set(held["language"])) == 2
    first = loaded.eval[0]
    assert held["prompt"][0] == first["messages"][:-1] and held["id"][0] == first["id"]
    assert set(held["id"]) <= set(loaded.eval["id"]) and not set(held["id"]) & set(loaded.train["id"])


def test_held_out_prompts_from_preference_pairs():
    from types import SimpleNamespace

    from datasets import Dataset

    pairs = Dataset.from_dict({"prompt": [PROMPT, PROMPT], "chosen": [[{"role": "assistant", "content": "Nzuri"}]] * 2,
                               "rejected": [[{"role": "assistant", "content": "Good"}]] * 2,
                               "language": ["sw", "sw"], "task": ["chat"] * 2, "source": ["s"] * 2, "id": ["a", "b"]})
    held = evaluate.held_out_prompts(SimpleNamespace(train=pairs, eval=pairs), None)
    assert held == {"prompt": [PROMPT, PROMPT], "language": ["sw", "sw"], "id": ["a", "b"]}
    with pytest.raises(ValueError, match="eval split is empty"):
        evaluate.held_out_prompts(SimpleNamespace(train=pairs, eval=pairs.select([])), None)


def test_reward_model_judge_is_antisymmetric(run_layout):
    cfg, run_dir = run_layout
    judge = RewardModelJudge.from_path(str(run_dir.final_dir("rm")), cfg.model, work_dir=run_dir.root / "unused",
                                       name="rm", batch_size=2)
    prompts = [PROMPT] * 4
    a, b = ["Nzuri sana", "Bonjour", "same", "こんにちは"], ["Hello there", "Salut", "same", "Как дела"]
    forward, backward = judge.compare(prompts, a, b), judge.compare(prompts, b, a)
    assert forward[2] == backward[2] == 0.5
    assert [f + g for f, g in zip(forward, backward)] == [1.0] * 4
    scores = judge.scores(prompts, a)
    assert scores == judge.scores(prompts[:1], a[:1]) + judge.scores(prompts[1:], a[1:])  # cached, batch-free


class FakeEndpoint:
    """Stands in for an OpenAI-compatible server: a judge biased to the first position, or a fair one."""

    def __init__(self, rule):
        self.rule, self.calls = rule, []

    def __call__(self, payload):
        content = payload["messages"][0]["content"]
        self.calls.append(payload)
        a = content.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        b = content.split("Response B:\n")[1].split("\n\nAnswer with")[0]
        return {"choices": [{"message": {"content": self.rule(a, b)}}]}


def test_endpoint_judge_position_swapping():
    biased = FakeEndpoint(lambda a, b: "A")
    judge = EndpointJudge("http://judge.invalid/v1", "m", post=biased)
    assert judge.compare([PROMPT] * 2, ["x", "y"], ["z", "y"]) == [0.5, 0.5]  # bias cancels; identical: no call
    assert len(biased.calls) == 2 and biased.calls[0]["model"] == "m"
    assert EndpointJudge("http://judge.invalid/v1", "m", post=biased, swap_positions=False).compare(
        [PROMPT], ["x"], ["z"]) == [1.0]
    fair = FakeEndpoint(lambda a, b: "A" if "good" in a else "B")
    assert EndpointJudge("http://judge.invalid/v1", "m", post=fair).compare(
        [PROMPT] * 2, ["good", "bad"], ["bad", "good"]) == [1.0, 0.0]


@pytest.mark.parametrize("reply, outcome", [("A", 1.0), ("b", 0.0), ("T", 0.5), (" Response A.", 1.0),
                                            ("Answer: B", 0.0), ("I cannot tell", 0.5), ("", 0.5)])
def test_parse_verdict(reply, outcome):
    assert parse_verdict(reply) == outcome


EVAL_RECIPE = """
defaults:
  - /aya_train
  - /model: tiny
  - /data@data.sft: chatterbot
  - /stage@stages.sft: sft
  - /stage@stages.evaluate: evaluate
  - _self_
stages:
  sft: {data: sft}
  evaluate: {models: [sft], baseline: sft, data: sft}
"""


@pytest.mark.parametrize("override, expected", [
    ("stages.evaluate.judge=sft", ["stages.evaluate.judge", "`sft` is a sft stage", "reward"]),
    ("stages.evaluate.judge=null", ["stages.evaluate.judge", "judge_endpoint.base_url"]),
    ("stages.evaluate.models=[]", ["stages.evaluate.models", "at least one"]),
    ("stages.evaluate.baseline=nope", ["stages.evaluate.baseline", "`nope`"]),
    ("stages.evaluate.data=sfd", ["stages.evaluate.data", "Did you mean `sft`"]),
    ("stages.evaluate.bootstrap_samples=10", ["stages.evaluate.bootstrap_samples"]),
])
def test_bad_evaluate_config_exits_2(tmp_path, capsys, override, expected):
    from aya_train.cli import main

    recipe = tmp_path / "eval.yaml"
    recipe.write_text(EVAL_RECIPE)
    # Without a reward stage in this chain, an endpoint judge stands in so only the override is wrong.
    assert main([f"recipe={recipe}", "stages.evaluate.judge_endpoint.base_url=http://judge.invalid/v1",
                 "stages.evaluate.judge_endpoint.model=m", *([override, "stages.evaluate.judge_endpoint.base_url=null"]
                                                            if "judge=" in override else [override])]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
