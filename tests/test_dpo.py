"""DPO stage: step-0 loss, reference from a named stage (SFT LoRA merged first), cached reference log-probs
reused across beta and resume, per-language metrics and held-out fidelity."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig

from aya_train.cli import main
from aya_train.data.contrast import contrast_pairs
from aya_train.metrics.per_language import read_metrics
from aya_train.modeling import load_model, load_tokenizer
from aya_train.recipe import compose_recipe
from aya_train.stages.dpo import PAIR_COLUMNS, AyaDPOTrainer

from .conftest import chain_overrides
from .test_reward import CONVERSATIONS


@pytest.mark.parametrize("precompute", [True, False])
def test_sigmoid_loss_at_step_0_is_log_2_when_policy_is_reference(tiny_model, tmp_path, precompute):
    cfg = compose_recipe("demo")
    pairs = contrast_pairs(Dataset.from_dict(CONVERSATIONS), seed=0).select_columns(PAIR_COLUMNS)
    args = DPOConfig(output_dir=str(tmp_path), beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
                     max_length=128, per_device_eval_batch_size=4, report_to="none", use_cpu=True, bf16=False)
    trainer = AyaDPOTrainer(model=load_model(cfg.model, tiny_model), args=args, train_dataset=pairs,
                            eval_dataset=pairs, processing_class=load_tokenizer(cfg.model, tiny_model),
                            ref_cache_dir=tmp_path / "cache" if precompute else None)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)


def _stage(run_dir, name):
    return json.loads((run_dir / "manifest.json").read_text())["stages"][name]


def _arrow_files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.arrow")}


def test_dpo_chain_metrics_fidelity_and_reference_cache(tmp_path, cache_dir):
    base = ["recipe=demo", *chain_overrides(tmp_path, cache_dir, keep=("sft", "dpo"), steps=4)]
    assert main(base) == 0
    run_dir = tmp_path / "demo"
    records = read_metrics(run_dir / "dpo" / "metrics.jsonl")
    keys = set().union(*(r.keys() for r in records))
    for key in ("eval/reward_accuracy/ja", "eval/reward_margin/fr", "eval/logps_chosen/hi", "eval/logps_rejected/ko", "eval/reward_accuracy/task:greetings", "train/reward_accuracy",
                "eval/language_fidelity/ja", "eval/language_fidelity"):
        assert key in keys, sorted(keys)[:40]
    # policy == reference before the first step: the sigmoid loss is log 2 on every language's pairs
    start = [r for r in records if r["step"] == 0 and "eval/loss" in r][0]
    assert start["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    fidelity = json.loads((run_dir / "dpo" / "fidelity.json").read_text())
    assert set(fidelity) == {"sft", "dpo"} and fidelity["sft"]["sampling"] == fidelity["dpo"]["sampling"]
    assert set(fidelity["sft"]["rates"]) == set(fidelity["dpo"]["rates"]) and len(fidelity["dpo"]["rates"]) >= 25
    table = json.loads((run_dir / "dpo" / "languages.json").read_text())
    assert table["ja"]["language_fidelity:dpo"] == fidelity["dpo"]["rates"]["ja"]

    computed = _stage(run_dir, "dpo")["summary"]["ref_logps"]
    assert computed and set(computed.values()) == {"computed"}
    cache = run_dir / "dpo" / "cache" / "ref_logps"
    files = _arrow_files(cache)
    # another beta and loss mixture: the stage reruns, the reference log-probs are read back, not recomputed
    assert main([*base, "run.force=true", "stages.dpo.beta=0.3", "stages.dpo.loss_type=[sigmoid,sft]",
                 "stages.dpo.loss_weights=[1.0,0.5]", "stages.dpo.measure_fidelity=false"]) == 0
    summary = _stage(run_dir, "dpo")["summary"]
    assert summary["beta"] == 0.3 and summary["ref_logps"] == dict.fromkeys(computed, "reused")
    assert _arrow_files(cache) == files
    rerun = read_metrics(run_dir / "dpo" / "metrics.jsonl")
    assert [r for r in rerun if r["step"] == 0 and "eval/loss" in r][0]["eval/loss"] > math.log(2)  # + 0.5 * sft loss
    # a different length limit changes the reference log-probs: computed again
    assert main([*base, "run.force=true", "stages.dpo.max_length=200", "stages.dpo.measure_fidelity=false"]) == 0
    assert set(_stage(run_dir, "dpo")["summary"]["ref_logps"].values()) == {"computed"}


def test_sft_lora_adapter_is_merged_so_the_reference_is_the_sft_model(tmp_path, cache_dir, tiny_model):
    args = ["recipe=demo", *chain_overrides(tmp_path, cache_dir, keep=("sft", "dpo"), steps=4),
            "stages.sft.lora.enabled=true", "stages.sft.learning_rate=0.05", "stages.dpo.lora.enabled=true",
            "stages.dpo.measure_fidelity=false"]
    assert main(args) == 0
    run_dir = tmp_path / "demo"
    assert (run_dir / "sft" / "final" / "adapter_config.json").is_file()
    merged = run_dir / "dpo" / "cache" / "merged-sft"
    assert (merged / "model.safetensors").is_file()
    # the adapter really changed the model, so a reference without it (the base) would differ
    cfg = compose_recipe("demo")
    ids = torch.tensor([[5, 17, 99, 256, 1000]])
    with torch.no_grad():
        base_logits = load_model(cfg.model, tiny_model)(ids).logits
        merged_logits = load_model(cfg.model, str(merged))(ids).logits
    assert not torch.allclose(base_logits, merged_logits, atol=1e-3)
    start = [r for r in read_metrics(run_dir / "dpo" / "metrics.jsonl") if r["step"] == 0 and "eval/loss" in r][0]
    assert start["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
