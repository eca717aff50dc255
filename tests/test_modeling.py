"""Promises of aya_train.modeling: the tiny model, tokenizer and chat template, precision, LoRA and merging."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from jinja2.exceptions import TemplateError  # noqa: E402

import chatterbot_corpus  # noqa: E402
from aya_train.config import LoraConfig, ModelConfig, TinyModelConfig  # noqa: E402
from aya_train.modeling import (  # noqa: E402
    build_tiny_model,
    load_model,
    load_tokenizer,
    lora_config,
    merge_adapter_if_any,
    on_gpu,
    precision_args,
    quantization_config,
    resolve_attn_implementation,
    resolve_dtype,
    tiny_model_fingerprint,
)
from aya_train.tiny_model import CHAT_TEMPLATE, IM_END  # noqa: E402

CORPUS = Path(chatterbot_corpus.__file__).parent / "data"
TINY = TinyModelConfig(vocab_size=1024)
SAMPLES = {
    "latin": "Ça va? Größe, niño, Łódź — naïve café.",
    "cyrillic": "Привет, как дела? Добро пожаловать!",
    "devanagari": "नमस्ते, आप कैसे हैं? मैं ठीक हूँ।",
    "cjk": "你好，世界！日本語のテキスト。한국어 문장입니다.",
    "arabic": "مرحبا بالعالم، كيف حالك؟ سلام دنیا",
    "thai": "สวัสดีครับ วันนี้อากาศดีมาก",
    "emoji": "Party 🎉🎉 family 👩‍👩‍👧 flag 🇮🇳 ok 👍🏽",
    "whitespace": "  two  spaces\ttab\nnewline\r\n\n  end ",
    "unseen_scripts": "ሰላም ጤና ይስጥልኝ · გამარჯობა · Ꭳꮃ",
}


def corpus_texts(languages=("english", "hindi", "russian", "chinese", "persian", "thai"), files=2) -> list[str]:
    """Turns of the first few chatterbot conversation files of each language, plus the samples above."""
    texts = []
    for language in languages:
        for path in sorted((CORPUS / language).glob("*.yml"))[:files]:
            for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
                texts += [turn for turn in conversation if isinstance(turn, str)]
    return texts + list(SAMPLES.values())


def model_cfg(path: Path, **overrides) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), **overrides)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(TINY, corpus_texts(), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_tokenizer(model_cfg(tiny_dir), str(tiny_dir))


# --- tokenizer and chat template ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES) + ["corpus"])
def test_tokenizer_round_trips_multilingual_text_exactly(tok, name):
    texts = corpus_texts(languages=("hindi", "persian", "thai"), files=1) if name == "corpus" else [SAMPLES[name]]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_special_tokens_are_chatml(tok):
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == (IM_END, "<|endoftext|>", None)
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id
    # No hidden bos/eos: what the chat template renders is exactly what gets tokenised.
    assert tok("hi")["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]


MESSAGES = [
    {"role": "system", "content": "You answer in the user's language."},
    {"role": "user", "content": "नमस्ते, आप कैसे हैं?"},
    {"role": "assistant", "content": "मैं ठीक हूँ, धन्यवाद! 🙏"},
    {"role": "user", "content": "Как сказать «спасибо» по-китайски?"},
    {"role": "assistant", "content": " Говорят «谢谢» (xièxie)."},
]


def test_assistant_mask_covers_exactly_the_assistant_content_and_its_end_token(tok):
    # Expected, built independently of the template: ChatML pieces, each flagged trained or not.
    pieces = [
        ("<|im_start|>system\nYou answer in the user's language.<|im_end|>\n", False),
        ("<|im_start|>user\nनमस्ते, आप कैसे हैं?<|im_end|>\n<|im_start|>assistant\n", False),
        ("मैं ठीक हूँ, धन्यवाद! 🙏<|im_end|>", True),
        ("\n<|im_start|>user\nКак сказать «спасибо» по-китайски?<|im_end|>\n<|im_start|>assistant\n", False),
        (" Говорят «谢谢» (xièxie).<|im_end|>", True),
        ("\n", False),
    ]
    expected_ids, expected_mask = [], []
    for text, trained in pieces:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        expected_ids += ids
        expected_mask += [int(trained)] * len(ids)

    assert tok.apply_chat_template(MESSAGES, tokenize=False) == "".join(text for text, _ in pieces)
    out = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert out["input_ids"] == expected_ids
    assert out["assistant_masks"] == expected_mask
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(trained) == "मैं ठीक हूँ, धन्यवाद! 🙏<|im_end|> Говорят «谢谢» (xièxie).<|im_end|>"


def test_generation_prompt_opens_an_assistant_turn(tok):
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert not tok.apply_chat_template(MESSAGES[:2], tokenize=False).endswith("assistant\n")


def test_chat_template_rejects_unknown_roles(tok):
    with pytest.raises(TemplateError, match="system, user or assistant"):
        tok.apply_chat_template([{"role": "tool", "content": "42"}], tokenize=False)


# --- building the tiny model -------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_tiny_model_build_is_deterministic_across_builds_and_processes(tiny_dir, tmp_path):
    again = build_tiny_model(TINY, corpus_texts(), tmp_path / "again")
    assert _files(again) == _files(tiny_dir)

    # A fresh process (new hash seeds) on one thread instead of two, as another rank would build it.
    (tmp_path / "texts.json").write_text(json.dumps(corpus_texts()), encoding="utf-8")
    script = (
        "import json, sys; from pathlib import Path\n"
        "from aya_train.config import TinyModelConfig; from aya_train.modeling import build_tiny_model\n"
        "texts = json.loads(Path(sys.argv[1]).read_text(encoding='utf-8'))\n"
        "build_tiny_model(TinyModelConfig(vocab_size=1024), texts, Path(sys.argv[2]))\n"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "texts.json"), str(tmp_path / "other")],
        check=True, env=env, capture_output=True,
    )
    assert _files(tmp_path / "other") == _files(tiny_dir)


def test_tiny_model_folder_is_a_cache(tiny_dir, tmp_path):
    def must_not_be_read():
        raise AssertionError("build_tiny_model rebuilt a complete folder")
        yield ""

    before = (tiny_dir / "model.safetensors").stat()
    assert build_tiny_model(TINY, must_not_be_read(), tiny_dir) == tiny_dir
    after = (tiny_dir / "model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")], "temp folder left behind"

    (tmp_path / "half").mkdir()
    with pytest.raises(FileExistsError, match="not a complete tiny model"):
        build_tiny_model(TINY, corpus_texts(), tmp_path / "half")


def test_tiny_model_fingerprint_is_stable_and_sensitive():
    fp = tiny_model_fingerprint(TINY, "abc", 0)
    assert fp == tiny_model_fingerprint(TinyModelConfig(vocab_size=1024), "abc", 0)
    assert len({fp, tiny_model_fingerprint(TINY, "abd", 0), tiny_model_fingerprint(TINY, "abc", 1),
                tiny_model_fingerprint(TinyModelConfig(vocab_size=512), "abc", 0)}) == 4


def test_tiny_model_rejects_inconsistent_sizes(tmp_path):
    with pytest.raises(ValueError, match="model.tiny.num_attention_heads"):
        build_tiny_model(TinyModelConfig(hidden_size=60, num_attention_heads=8), ["x"], tmp_path / "m")


def test_tiny_model_loads_and_starts_at_uniform_loss(tiny_dir, tok):
    model = load_model(model_cfg(tiny_dir), str(tiny_dir))
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    ids = torch.tensor([tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert math.isfinite(loss)
    assert loss == pytest.approx(math.log(len(tok)), abs=0.15)


def test_load_model_as_sequence_classifier(tiny_dir, tok, tmp_path):
    reward = load_model(model_cfg(tiny_dir), str(tiny_dir), task="seq_cls", num_labels=1)
    assert reward.config.pad_token_id == tok.pad_token_id
    batch = tok(["short", "a longer sentence here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert reward(**batch).logits.shape == (2, 1)

    # A checkpoint without a pad id takes the tokenizer's, or the classifier cannot find the last token.
    no_pad = tmp_path / "no_pad"
    shutil.copytree(tiny_dir, no_pad)
    config = json.loads((no_pad / "config.json").read_text())
    (no_pad / "config.json").write_text(json.dumps({**config, "pad_token_id": None}))
    reward = load_model(model_cfg(no_pad), str(no_pad), task="seq_cls", pad_token_id=tok.pad_token_id)
    assert reward.config.pad_token_id == tok.pad_token_id
    with pytest.raises(ValueError, match="causal_lm, seq_cls"):
        load_model(model_cfg(no_pad), str(no_pad), task="token_cls")


def test_load_tokenizer_applies_chat_template_override_and_pads(tiny_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("pad_token")
    (bare / "tokenizer_config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match="set model.chat_template"):
        load_tokenizer(model_cfg(bare), str(bare))
    inline = load_tokenizer(model_cfg(bare, chat_template=CHAT_TEMPLATE), str(bare))
    assert inline.chat_template == CHAT_TEMPLATE
    assert inline.pad_token == inline.eos_token == IM_END
    (tmp_path / "chatml.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    from_file = load_tokenizer(model_cfg(bare, chat_template=str(tmp_path / "chatml.jinja")), str(bare))
    assert from_file.chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match="model.chat_template"):
        load_tokenizer(model_cfg(bare, chat_template=str(tmp_path / "missing.jinja")), str(bare))


# --- hardware: dtype, attention, precision -----------------------------------------------------------


@pytest.mark.skipif(on_gpu(), reason="checks the CPU fallbacks")
def test_cpu_resolves_to_float32_and_sdpa():
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_attn_implementation("auto") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"


def test_bad_dtype_and_attention_names_name_the_config_key():
    with pytest.raises(ValueError, match=r"model\.dtype.*float32, bfloat16, float16"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match=r"model\.attn_implementation.*flash_attention_2, sdpa, eager"):
        resolve_attn_implementation("flash")


@pytest.mark.skipif(bool(__import__("importlib").util.find_spec("flash_attn")), reason="flash_attn is installed")
def test_flash_attention_without_the_package_says_how_to_fix_it():
    with pytest.raises(ValueError, match=r"pip install aya-train\[gpu\].*sdpa"):
        resolve_attn_implementation("flash_attention_2")


@pytest.mark.skipif(on_gpu(), reason="checks the CPU fallbacks")
def test_precision_args_make_trl_configs_safe_on_cpu(tmp_path):
    from trl import SFTConfig

    args = precision_args(ModelConfig(name_or_path="tiny", gradient_checkpointing=True))
    # transformers 5.2x renamed gradient_checkpointing (now a deprecated alias) to activation_checkpointing.
    assert args == {"use_cpu": True, "bf16": False, "fp16": False, "activation_checkpointing": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = SFTConfig(output_dir=str(tmp_path), **args)  # trl's defaults: bf16=True, checkpointing on
    assert config.use_cpu and not config.bf16 and not config.fp16
    assert not config.activation_checkpointing and not config.gradient_checkpointing
    assert not [w for w in caught if "checkpointing" in str(w.message)]


# --- LoRA, quantisation, merging ---------------------------------------------------------------------


def test_lora_config_maps_fields_and_all_linear():
    assert lora_config(LoraConfig(enabled=False), "CAUSAL_LM") is None
    cfg = lora_config(LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1), "SEQ_CLS")
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.task_type) == (4, 8, 0.1, "SEQ_CLS")
    assert cfg.target_modules == "all-linear"
    named = lora_config(LoraConfig(enabled=True, target_modules=["q_proj", "v_proj"]), "CAUSAL_LM")
    assert set(named.target_modules) == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="all-linear"):
        lora_config(LoraConfig(enabled=True, target_modules=["all-linear", "q_proj"]), "CAUSAL_LM")
    with pytest.raises(ValueError, match="CAUSAL_LM, SEQ_CLS"):
        lora_config(LoraConfig(enabled=True), "causal_lm")


def test_lora_trains_only_adapter_weights(tiny_dir):
    model = load_model(model_cfg(tiny_dir), str(tiny_dir))
    wrapped = peft.get_peft_model(model, lora_config(LoraConfig(enabled=True, r=4), "CAUSAL_LM"))
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # all-linear: every projection of every block, never the output head.
    assert {name.split(".")[-4] for name in trainable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }


def test_quantization_is_off_by_default_and_refused_on_cpu():
    assert quantization_config(LoraConfig(enabled=True)) is None
    with pytest.raises(ValueError, match="lora.quantize"):
        quantization_config(LoraConfig(enabled=True, quantize="2bit"))
    with pytest.raises(ValueError, match="lora.enabled=true"):
        quantization_config(LoraConfig(enabled=False, quantize="4bit"))
    if not on_gpu():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            quantization_config(LoraConfig(enabled=True, quantize="4bit"))


def test_merged_adapter_gives_the_same_logits_as_the_adapter(tiny_dir, tok, tmp_path):
    cfg = model_cfg(tiny_dir)
    assert merge_adapter_if_any(str(tiny_dir), cfg, tmp_path / "unused") == str(tiny_dir)
    assert not (tmp_path / "unused").exists()

    base = load_model(cfg, str(tiny_dir))
    adapted = peft.get_peft_model(base, lora_config(LoraConfig(enabled=True, r=4, alpha=4, dropout=0.0), "CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter actually change the model
                param.normal_(std=0.2)
    adapted.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")

    ids = torch.tensor([tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]])
    adapted.eval()
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        with adapted.disable_adapter():
            before = adapted(input_ids=ids).logits
    assert not torch.allclose(expected, before, atol=1e-3), "the adapter must matter for this test to mean anything"

    merged_dir = merge_adapter_if_any(str(tmp_path / "adapter"), cfg, tmp_path / "merged")
    assert merged_dir == str(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = load_model(cfg, merged_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert load_tokenizer(cfg, merged_dir).chat_template == tok.chat_template

    # Same adapter again: the merged folder is reused, not rewritten.
    stamp = (tmp_path / "merged" / "model.safetensors").stat().st_mtime_ns
    assert merge_adapter_if_any(str(tmp_path / "adapter"), cfg, tmp_path / "merged") == merged_dir
    assert (tmp_path / "merged" / "model.safetensors").stat().st_mtime_ns == stamp


def test_merged_reward_adapter_keeps_its_trained_score_head(tiny_dir, tok, tmp_path):
    cfg = model_cfg(tiny_dir)
    reward = load_model(cfg, str(tiny_dir), task="seq_cls", num_labels=1)
    adapted = peft.get_peft_model(reward, lora_config(LoraConfig(enabled=True, r=4, alpha=4, dropout=0.0), "SEQ_CLS"))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if param.requires_grad:  # lora weights and the fully trained score head (peft's modules_to_save)
                param.normal_(std=0.2)
    adapted.save_pretrained(tmp_path / "adapter")
    batch = tok(["short", "a longer sentence here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = adapted.eval()(**batch).logits

    merged_dir = merge_adapter_if_any(str(tmp_path / "adapter"), cfg, tmp_path / "merged", num_labels=1)
    merged = load_model(cfg, merged_dir, task="seq_cls", num_labels=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)
