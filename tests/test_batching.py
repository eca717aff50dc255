"""SFT batching follows the attention kernel: packed rows train exactly what padded batches train, with no
padding and no attention across conversations; the choice is automatic, overridable and validated."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from aya_train.batching import PackedRowsCollator, resolve_batching
from aya_train.cli import main
from aya_train.modeling import load_tokenizer
from aya_train.recipe import compose_recipe

from .conftest import quick_overrides

CONVERSATIONS = [
    [{"role": "user", "content": "Habari yako?"}, {"role": "assistant", "content": "Nzuri sana, asante."}],
    [{"role": "user", "content": "Bonjour, ça va ?"}, {"role": "assistant", "content": "Oui, très bien, merci !"}],
    [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは！元気です。"}],
    [{"role": "user", "content": "Как дела?"}, {"role": "assistant", "content": "Хорошо, спасибо."}],
    [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "¡Hola! ¿Qué tal?"}],
    [{"role": "user", "content": "नमस्ते"}, {"role": "assistant", "content": "नमस्ते, आप कैसे हैं?"}],
]


def _rows(tokenizer):
    """Tokenised conversations with assistant-only labels, as trl prepares them."""
    ids, labels = [], []
    for conv in CONVERSATIONS:
        out = tokenizer.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
        ids.append(out["input_ids"])
        labels.append([t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"])])
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def _loss(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).loss.item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_loss_equals_padded_loss(tiny_model, attn):
    from transformers import AutoModelForCausalLM

    cfg = compose_recipe("demo")
    tok = load_tokenizer(cfg.model, tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    rows = _rows(tok)
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(list(rows))
    longest = max(len(r) for r in rows["input_ids"])
    # rows just long enough for two or three conversations each: several packed rows, the last one padded
    packed = pack_dataset(rows, seq_length=2 * longest + 3, strategy="bfd")
    assert 1 < len(packed) < len(rows) and any(len(s) > 1 for s in packed["seq_lengths"])
    batch = PackedRowsCollator(pad_token_id=tok.pad_token_id)(list(packed))

    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == len(packed)
    # the same trained tokens, no more, no fewer
    assert (batch["labels"] != -100).sum() == (padded["labels"] != -100).sum()
    assert _loss(model, batch) == pytest.approx(_loss(model, padded), rel=1e-5)

    # the control: with an attention mask, transformers ignores the position restarts and the loss changes
    leaky = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, return_position_ids=True)(list(packed))
    assert abs(_loss(model, leaky) - _loss(model, padded)) > 1e-3


def test_packed_rows_unpacked_rows_collate_like_padding(tiny_model):
    """Evaluation rows are not packed: the same collator must give the padded batch's loss on them."""
    from transformers import AutoModelForCausalLM

    cfg = compose_recipe("demo")
    tok = load_tokenizer(cfg.model, tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    rows = list(_rows(tok))
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows)
    ours = PackedRowsCollator(pad_token_id=tok.pad_token_id)(rows)
    assert _loss(model, ours) == pytest.approx(_loss(model, padded), rel=1e-5)


def test_auto_follows_the_attention_kernel():
    assert resolve_batching("auto", "flash_attention_2") == "padding_free"
    assert resolve_batching("auto", "sdpa") == "packed_rows"
    assert resolve_batching("auto", "eager") == "packed_rows"
    assert resolve_batching("padded", "flash_attention_2") == "padded"
    with pytest.raises(ValueError, match="padding_free"):
        resolve_batching("packed_rows", "flash_attention_2")


@pytest.mark.parametrize("override, message", [
    ("stages.sft.batching=packed", "stages.sft.batching: `packed` is not one of"),
    ("+stages.sft.args.packing=true", "stages.sft.args.packing: set by `batching`"),
    ("+stages.sft.args.padding_free=true", "stages.sft.args.padding_free: set by `batching`"),
])
def test_bad_batching_config_exits_2(override, message, capsys):
    assert main(["recipe=demo", override]) == 2
    assert message in capsys.readouterr().err


def test_batching_the_attention_kernel_cannot_honour_exits_2_before_loading(monkeypatch, capsys):
    from aya_train import modeling

    assert main(["recipe=demo", "model.attn_implementation=flash_attention_2"]) == 2  # no flash_attn here
    assert "model.attn_implementation=flash_attention_2 needs the flash_attn package" in capsys.readouterr().err
    monkeypatch.setattr(modeling, "_flash_attn_installed", lambda: True)  # as on a GPU machine with flash-attn
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["recipe=demo", "model.attn_implementation=flash_attention_2", "stages.sft.batching=packed_rows"]) == 2
    assert "stages.sft.batching: batching=packed_rows with attn_implementation=flash_attention_2" in capsys.readouterr().err


def test_stage_trains_with_packed_rows_by_default_on_cpu(tmp_path, cache_dir):
    """The demo on CPU: auto resolves to packed_rows; batches are full rows, no padding trained, counted right."""
    import json

    from aya_train.metrics.per_language import read_metrics

    assert main(["recipe=demo", *quick_overrides(tmp_path, cache_dir, steps=4), "stages.sft.logging_steps=2",
                 "stages.sft.per_device_train_batch_size=4", "stages.sft.max_length=128"]) == 0
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["summary"]["batching"] == "packed_rows"
    tokens = [r["train/num_tokens"] for r in read_metrics(tmp_path / "demo" / "sft" / "metrics.jsonl")
              if "train/num_tokens" in r]
    # 2 steps of 4 packed rows of at most 128 tokens each, nearly full
    assert 0.9 * 2 * 4 * 128 < tokens[0] <= 2 * 4 * 128


def test_trainer_loss_on_packed_rows_equals_padded(tiny_model, tmp_path):
    """Through the trainer's own loss (which must turn the KV cache off, or packing goes undetected)."""
    from trl import SFTConfig

    from aya_train.modeling import load_model
    from aya_train.stages.sft import AyaSFTTrainer

    cfg = compose_recipe("demo")
    tok = load_tokenizer(cfg.model, tiny_model)
    model = load_model(cfg.model, tiny_model).eval()
    conversations = Dataset.from_dict({"messages": CONVERSATIONS})
    args = SFTConfig(output_dir=str(tmp_path), packing=True, eval_packing=False, max_length=96,
                     assistant_only_loss=True, report_to="none", use_cpu=True, bf16=False)
    trainer = AyaSFTTrainer(model=model, args=args, train_dataset=conversations, processing_class=tok)
    trainer.data_collator = PackedRowsCollator(pad_token_id=tok.pad_token_id)
    packed_rows = list(trainer.train_dataset)
    assert 1 < len(packed_rows) < len(CONVERSATIONS)
    with torch.no_grad():
        packed = trainer.compute_loss(model, trainer.data_collator(packed_rows)).item()
        padded = trainer.compute_loss(model, DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(
            list(_rows(tok)))).item()
    assert packed == pytest.approx(padded, rel=1e-5)
