"""SFT end to end on the tiny model: loss falls per language, masks cover the assistant tokens exactly,
packed and padded losses agree, overrides reach the trainer, the run directory is complete."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig

from aya_train.cli import main
from aya_train.metrics.per_language import read_metrics
from aya_train.modeling import load_model, load_tokenizer
from aya_train.recipe import compose_recipe
from aya_train.stages.sft import AyaSFTTrainer

from .conftest import quick_overrides

CONVERSATIONS = [
    [{"role": "user", "content": "Habari yako?"}, {"role": "assistant", "content": "Nzuri sana, asante."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bonjour"},
     {"role": "assistant", "content": "Salut !"}, {"role": "user", "content": "Ça va ?"},
     {"role": "assistant", "content": "Oui, très bien."}],
    [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは！元気です。"}],
    [{"role": "user", "content": "Как дела?"}, {"role": "assistant", "content": "Хорошо, спасибо."}],
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs")
    args = ["recipe=demo", *quick_overrides(out, cache_dir, steps=40), "stages.sft.eval_steps=20",
            "stages.sft.learning_rate=0.003", "stages.sft.lr_scheduler_type=constant"]
    assert main(args) == 0
    return out / "demo", args


def test_eval_loss_falls_in_every_language(demo_run):
    run_dir, _ = demo_run
    table = json.loads((run_dir / "sft" / "languages.json").read_text())
    assert len(table) >= 25
    with_eval = {lang: row for lang, row in table.items() if row["first_eval_loss"] is not None}
    assert len(with_eval) >= 25
    for lang, row in with_eval.items():
        assert row["last_eval_loss"] < row["first_eval_loss"], (lang, row)
        assert row["rows"] > 0 and row["tokens"] > row["rows"]


def test_per_language_and_task_metric_names(demo_run):
    run_dir, _ = demo_run
    keys = set().union(*(rec.keys() for rec in read_metrics(run_dir / "sft" / "metrics.jsonl")))
    for key in ("eval/loss", "eval/loss/yo", "eval/loss/ja", "eval/loss/task:greetings",
                "eval/mean_token_accuracy/hi", "train/loss"):
        assert key in keys, sorted(keys)[:40]


def test_shell_override_reaches_trainer(demo_run):
    run_dir, _ = demo_run
    records = read_metrics(run_dir / "sft" / "metrics.jsonl")
    rates = [rec["train/learning_rate"] for rec in records if "train/learning_rate" in rec]
    assert rates and all(rate == pytest.approx(0.003) for rate in rates)
    assert max(rec["step"] for rec in records) == 40


def test_run_directory_layout_and_reuse(demo_run, capsys):
    run_dir, args = demo_run
    assert (run_dir / "config.yaml").is_file() and (run_dir / "sft" / "DONE").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stage = manifest["stages"]["sft"]
    assert stage["status"] == "done" and stage["data_fingerprint"] and manifest["version"]
    final = run_dir / "sft" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer_config.json").is_file()
    before = (final / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # same command again: the finished stage is reused, not retrained
    assert (final / "model.safetensors").stat().st_mtime_ns == before


def _trainer(model_path, tmp_path, packing: bool, cfg):
    tok = load_tokenizer(cfg.model, model_path)
    model = load_model(cfg.model, model_path)
    args = SFTConfig(output_dir=str(tmp_path), packing=packing, assistant_only_loss=True, max_length=256,
                     per_device_eval_batch_size=64, report_to="none", use_cpu=True, bf16=False)
    data = Dataset.from_dict({"messages": CONVERSATIONS})
    return AyaSFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tok), tok


def test_assistant_mask_is_exactly_assistant_tokens_and_end(tiny_model, tmp_path):
    cfg = compose_recipe("demo")
    trainer, tok = _trainer(tiny_model, tmp_path, packing=False, cfg=cfg)
    end = "<|im_end|>"
    for row, conv in zip(trainer.train_dataset, CONVERSATIONS):
        ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]
        trained = [i for i, m in zip(ids, mask) if m]
        expected = "".join(m["content"] + end for m in conv if m["role"] == "assistant")
        assert tok.decode(trained) == expected
        # and nothing of the prompt side: user/system text never appears among trained tokens
        untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
        for m in conv:
            if m["role"] != "assistant":
                assert m["content"] in untrained
    # what the model is trained on: the collated batch's labels are exactly the assistant tokens' ids
    row = trainer.train_dataset[1]
    batch = trainer.data_collator([row])
    expected = torch.tensor([i if label != -100 else -100 for i, label in zip(row["input_ids"], row["labels"])])
    assert torch.equal(batch["labels"][0], expected)


def test_packed_and_padded_losses_agree(tiny_model, tmp_path):
    cfg = compose_recipe("demo")
    padded, _ = _trainer(tiny_model, tmp_path / "a", packing=False, cfg=cfg)
    packed, _ = _trainer(tiny_model, tmp_path / "b", packing=True, cfg=cfg)
    assert len(packed.eval_dataset) < len(padded.eval_dataset)  # really packed
    loss_padded = padded.evaluate()["eval_loss"]
    loss_packed = packed.evaluate()["eval_loss"]
    assert math.isfinite(loss_padded)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)


def test_user_sharegpt_and_aya_files_train(tmp_path, cache_dir):
    aya = tmp_path / "aya.jsonl"
    aya.write_text("".join(json.dumps({"inputs": f"Swali {i}?", "targets": f"Jibu {i}.", "language": "Swahili",
                                       "language_code": "swh", "annotation_type": "original-annotations"}) + "\n"
                           for i in range(12)), encoding="utf-8")
    share = tmp_path / "chat.jsonl"
    share.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"Question {i}?"},
                                                           {"from": "gpt", "value": f"Réponse {i}."}],
                                         "language": "fr"}) + "\n" for i in range(12)), encoding="utf-8")
    sources = f"data.sft.sources=[{{path:{aya},format:aya_dataset}},{{path:{share},format:sharegpt}}]"
    common = ["recipe=demo", sources, *quick_overrides(tmp_path / "runs", cache_dir, steps=4)]
    assert main([*common, "run.dry_run=true"]) == 0
    assert main(common) == 0
    table = json.loads((tmp_path / "runs" / "demo" / "sft" / "languages.json").read_text())
    assert set(table) == {"sw", "fr"} and table["sw"]["rows"] + table["fr"]["rows"] >= 20
