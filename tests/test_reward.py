"""Reward stage: contrast pairs, per-language accuracy and margin, held-out accuracy after training,
references checked before anything loads."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from aya_train.cli import main
from aya_train.data.contrast import as_preferences, contrast_pairs
from aya_train.data.languages import identify_language
from aya_train.metrics.per_language import read_metrics

from .conftest import chain_overrides, demo_stages

CONVERSATIONS = {
    "messages": [
        [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "Hola, ¿cómo estás hoy?"}],
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how are you today?"}],
        [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Salut"},
         {"role": "user", "content": "Ça va ?"}, {"role": "assistant", "content": "Oui, très bien, merci."}],
        [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Guten Tag, wie geht es dir?"}],
    ],
    "language": ["es", "en", "fr", "de"], "task": ["greetings"] * 4, "source": ["t"] * 4,
    "id": ["t:1", "t:2", "t:3", "t:4"],
}


def test_contrast_pair_prefers_the_reply_in_the_prompts_language():
    pairs = contrast_pairs(Dataset.from_dict(CONVERSATIONS), seed=3)
    assert pairs.column_names == ["prompt", "chosen", "rejected", "language", "task", "source", "id"]
    for row, conv in zip(pairs, CONVERSATIONS["messages"]):
        assert row["prompt"] == conv[:-1] and row["chosen"] == [conv[-1]]  # multi-turn context kept whole
        rejected = row["rejected"][0]["content"]
        assert rejected in {c[-1]["content"] for c in CONVERSATIONS["messages"]} - {conv[-1]["content"]}
        assert identify_language(rejected)[0] != row["language"]
    assert contrast_pairs(Dataset.from_dict(CONVERSATIONS), seed=3).to_list() == pairs.to_list()  # deterministic
    with pytest.raises(ValueError, match="two languages"):
        contrast_pairs(Dataset.from_dict({k: v[:1] for k, v in CONVERSATIONS.items()}), seed=3)


def test_held_out_pairs_come_from_held_out_conversations_only():
    class Loaded:
        train = Dataset.from_dict({k: v[:2] for k, v in CONVERSATIONS.items()})
        eval = Dataset.from_dict({k: v[2:] for k, v in CONVERSATIONS.items()})

    split = as_preferences(Loaded, seed=0)
    held_out_replies = {c[-1]["content"] for c in CONVERSATIONS["messages"][2:]}
    assert {r["rejected"][0]["content"] for r in split.eval} <= held_out_replies
    assert not {r["rejected"][0]["content"] for r in split.train} & held_out_replies


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs")
    args = ["recipe=demo", *chain_overrides(out, cache_dir, keep=("sft", "reward"), steps=6),
            "stages.reward.eval_steps=3", "stages.reward.logging_steps=2"]
    assert main(args) == 0
    return out / "demo"


def test_per_language_and_task_reward_metrics(reward_run):
    keys = set().union(*(r.keys() for r in read_metrics(reward_run / "reward" / "metrics.jsonl")))
    for key in ("eval/reward_accuracy", "eval/reward_margin", "eval/reward_accuracy/ja", "eval/reward_margin/hi",
                "eval/reward_accuracy/task:greetings", "train/reward_accuracy", "train/loss"):
        assert key in keys, sorted(keys)[:30]
    table = json.loads((reward_run / "reward" / "languages.json").read_text())
    assert len(table) >= 25 and all(row["eval_pairs"] >= 1 and row["reward_accuracy"] is not None
                                    for row in table.values())
    final = reward_run / "reward" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1


@pytest.mark.slow  # ~1-2 min on 2 cores: the demo's own sft and reward settings
def test_reward_model_accuracy_on_held_out_pairs(tmp_path, cache_dir):
    drop = [f"~stages.{name}" for name in demo_stages() if name not in ("sft", "reward")]
    assert main(["recipe=demo", f"run.output_dir={tmp_path}", f"run.cache_dir={cache_dir}", *drop]) == 0
    table = json.loads((tmp_path / "demo" / "reward" / "languages.json").read_text())
    accuracy = [row["reward_accuracy"] for row in table.values()]
    assert sum(accuracy) / len(accuracy) > 0.8, table


@pytest.mark.parametrize("override, message", [
    ("stages.reward.init=nosuch", "stages.reward.init: no stage `nosuch`"),
    ("stages.rl.reward_model=sft", "`sft` is a sft stage; it must name a stage of kind reward"),
    ("stages.reward.init=dpo", "`dpo` is a later stage"),
    ("stages.rl.num_generations=1", "stages.rl.num_generations: 1 gives no leave-one-out baseline"),
    ("stages.rl.algorithm=ppo", "stages.rl.algorithm: `ppo` is not an online trainer"),
    ("+stages.rl.reward_functions.fidelity=1.0", "stages.rl.reward_functions.fidelity: use the built-in"),
])
def test_bad_references_exit_2_before_any_model_loads(override, message, capsys, tmp_path):
    assert main(["recipe=demo", f"run.output_dir={tmp_path}", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_unfinished_stage_stops_the_run_before_loading(tmp_path, cache_dir, capsys):
    assert main(["recipe=demo", *chain_overrides(tmp_path, cache_dir, keep=("sft", "reward")), "run.only=[reward]"]) == 2
    assert "reads `sft` (stages.reward.init), which is not finished" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "reward").exists()
