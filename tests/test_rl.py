"""RL stage: RLOO with the reward model + the language-fidelity reward, GRPO selectable, per-language rollout
metrics, held-out fidelity of the init and trained policies."""

from __future__ import annotations

import json

import pytest

from aya_train.cli import main
from aya_train.metrics.per_language import read_metrics
from aya_train.stages.rl import reward_function

from .conftest import chain_overrides


def test_rloo_with_reward_model_and_fidelity_reward(tmp_path, cache_dir):
    args = ["recipe=demo", *chain_overrides(tmp_path, cache_dir, keep=("sft", "reward", "rl"), steps=3)]
    assert main(args) == 0
    run_dir = tmp_path / "demo"
    records = read_metrics(run_dir / "rl" / "metrics.jsonl")
    keys = set().union(*(r.keys() for r in records))
    assert "train/kl" in keys and "rewards/language_fidelity/mean" in keys  # trl names with a slash stay as they are
    assert any(k.startswith("rl/reward_mean/") for k in keys) and any(k.startswith("rl/language_fidelity/") for k in keys)
    assert max(r["step"] for r in records) == 3
    fidelity = json.loads((run_dir / "rl" / "fidelity.json").read_text())
    assert set(fidelity) == {"sft", "rl"} and fidelity["sft"]["sampling"] == fidelity["rl"]["sampling"]
    assert fidelity["rl"]["backend"] == "transformers"
    summary = json.loads((run_dir / "manifest.json").read_text())["stages"]["rl"]["summary"]
    assert summary["algorithm"] == "rloo" and summary["num_generations"] == 2
    assert (run_dir / "rl" / "final" / "model.safetensors").is_file()


def test_grpo_with_fidelity_reward_only_logs_reward_equal_to_fidelity(tmp_path, cache_dir):
    args = ["recipe=demo", *chain_overrides(tmp_path, cache_dir, keep=("sft", "rl"), steps=2),
            "stages.rl.algorithm=grpo", "stages.rl.reward_model=null", "stages.rl.measure_fidelity=false"]
    assert main(args) == 0
    records = read_metrics(tmp_path / "demo" / "rl" / "metrics.jsonl")
    pairs = [(r[k], r[k.replace("reward_mean", "language_fidelity")]) for r in records for k in r
             if k.startswith("rl/reward_mean/")]
    assert pairs and all(reward == pytest.approx(fid) for reward, fid in pairs)  # weight 1, one reward
    assert json.loads((tmp_path / "demo" / "manifest.json").read_text())["stages"]["rl"]["summary"]["algorithm"] == "grpo"


def test_reward_function_by_import_path():
    assert reward_function("language_fidelity").__name__ == "language_fidelity"
    assert reward_function("os.path:join") is __import__("os").path.join
    with pytest.raises(ValueError, match="reward_functions.nosuch.mod:f"):
        reward_function("nosuch.mod:f")


def _launch(tmp_path, config: str, port: int, overrides: list, extra_env: dict, launch_args=()):
    import os
    import subprocess
    import sys

    from .conftest import REPO

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **extra_env}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / config), *launch_args,
           "--main_process_port", str(port), "-m", "aya_train", "recipe=demo", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
@pytest.mark.multiprocess  # 2 processes x 4 stages: ~2 min on 2 cores; `make test-all`
def test_whole_chain_under_two_process_cpu_launch(tmp_path, cache_dir, tiny_model):
    overrides = chain_overrides(tmp_path, cache_dir, keep=("sft", "reward", "dpo", "rl"), steps=2)
    proc = _launch(tmp_path, "launch/accelerate/cpu_ddp.yaml", 29531, overrides, {})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "processes=2" in proc.stdout + proc.stderr
    run_dir = tmp_path / "demo"
    for stage in ("sft", "reward", "dpo", "rl"):
        assert (run_dir / stage / "DONE").is_file(), stage
        steps = [r["step"] for r in read_metrics(run_dir / stage / "metrics.jsonl") if "train/loss" in r]
        assert steps == sorted(set(steps)), f"{stage}: rank 1 must not write metrics too"
    # RLOO under DDP: rewards gathered over both ranks' completions, per-language rollout metrics logged once
    assert any(k.startswith("rl/reward_mean/") for r in read_metrics(run_dir / "rl" / "metrics.jsonl") for k in r)
    assert set(json.loads((run_dir / "dpo" / "fidelity.json").read_text())) == {"sft", "dpo"}


@pytest.mark.slow
@pytest.mark.multiprocess  # DeepSpeed compiles its CPU comm op on first use (~40 s); `make test-all`
def test_dpo_under_deepspeed_zero3_on_cpu(tmp_path, cache_dir, tiny_model):
    overrides = [*chain_overrides(tmp_path, cache_dir, keep=("sft", "dpo"), steps=2), "stages.dpo.measure_fidelity=false"]
    env = {"DS_ACCELERATOR": "cpu"}  # the comm op is compiled once into ~/.cache/torch_extensions and reused
    proc = _launch(tmp_path, "launch/accelerate/zero3.yaml", 29533, overrides, env,
                   ["--num_processes", "2", "--mixed_precision", "no"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "demo"
    assert (run_dir / "dpo" / "DONE").is_file() and (run_dir / "dpo" / "final" / "model.safetensors").is_file()
    records = read_metrics(run_dir / "dpo" / "metrics.jsonl")
    start = [r for r in records if r["step"] == 0 and "eval/loss" in r][0]
    assert start["eval/loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference, also sharded


def test_chain_table_joins_rm_accuracy_and_each_policys_fidelity():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from aya_train.report import chain_table

    cfg = OmegaConf.create({"stages": {name: {"kind": name} for name in ("sft", "reward", "dpo", "rl", "evaluate")}})
    result = lambda rows: SimpleNamespace(languages=rows)  # noqa: E731
    results = {
        "sft": result({"fr": {"rows": 3}}),
        "reward": result({"fr": {"reward_accuracy": 0.9}, "ja": {"reward_accuracy": 0.7}}),
        # dpo's own reward_accuracy is its implicit reward, not the reward model's: left out
        "dpo": result({"fr": {"reward_accuracy": 0.6, "language_fidelity:sft": 0.2, "language_fidelity:dpo": 0.5}}),
        "rl": result({"fr": {"language_fidelity:sft": 0.2, "language_fidelity:rl": 0.4}}),
        "evaluate": result({"all": {"win_rate": 0.5}}),
    }
    table = chain_table(results, cfg)
    assert table["fr"] == {"reward accuracy": 0.9, "fidelity sft": 0.2, "fidelity dpo": 0.5, "fidelity rl": 0.4}
    assert "all" not in table and table["mean"]["reward accuracy"] == pytest.approx(0.8)


def test_rl_args_are_checked_against_the_selected_algorithms_trl_config():
    from aya_train.errors import ConfigError
    from aya_train.recipe import compose_recipe

    compose_recipe("demo", ["stages.rl.algorithm=grpo", "+stages.rl.args.loss_type=dapo"])  # a GRPOConfig field
    compose_recipe("demo", ["+stages.rl.args.normalize_advantages=true"])  # an RLOOConfig field, rloo by default
    with pytest.raises(ConfigError, match="stages.rl.args.loss_type: not a field of trl's RLOOConfig"):
        compose_recipe("demo", ["+stages.rl.args.loss_type=dapo"])
    with pytest.raises(ConfigError, match="stages.rl.args.normalize_advantages: not a field of trl's GRPOConfig"):
        compose_recipe("demo", ["stages.rl.algorithm=grpo", "+stages.rl.args.normalize_advantages=true"])
