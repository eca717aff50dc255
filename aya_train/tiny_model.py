"""The built-in tiny model: a byte-level BPE tokenizer trained on the given texts plus a random-init Llama.

Built offline in well under a second, deterministic (same texts, sizes and seed give byte-identical files)
and cached: callers name the folder with `tiny_model_fingerprint` and `build_tiny_model` reuses it.

Special tokens (ChatML, as Qwen uses them):
- `<|im_end|>` is eos: it ends every turn, so a model trained on chats learns to stop on it.
- `<|endoftext|>` is pad (never trained: padded positions are masked out of the loss).
- There is no bos token: the template does not emit one and no post-processor adds one, so no stage
  (SFT's chat template, DPO's prompt tokenisation) can disagree about a leading token.
The model unties its input embeddings from the output head, like the larger Llamas: merges, adapters and
exports then never depend on how a library handles shared tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

import torch

from aya_train.config import TinyModelConfig

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Bump when the build changes what lands on disk, so fingerprinted caches are rebuilt.
BUILD_VERSION = 1
# A folder holding all of these was written by build_tiny_model (it appears atomically, all at once).
REQUIRED_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
)

# ChatML. `generation` wraps the assistant content *and* its <|im_end|>, so trl's assistant_only_loss also
# trains the model to stop; the header `<|im_start|>assistant\n` is prompt, not trained.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('Unsupported role ' + message['role'] + ': use system, user or assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tiny_model_fingerprint(cfg: TinyModelConfig, texts_fingerprint: str, seed: int) -> str:
    """Short stable hash of everything a tiny model is built from; callers use it as the cache folder name."""
    # Field by field, so an OmegaConf node works as well as the dataclass.
    sizes = {f.name: getattr(cfg, f.name) for f in fields(TinyModelConfig)}
    key = {"build": BUILD_VERSION, "sizes": sizes, "texts": texts_fingerprint, "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def _check_sizes(cfg: TinyModelConfig) -> None:
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"model.tiny.hidden_size={cfg.hidden_size} must be divisible by "
            f"model.tiny.num_attention_heads={cfg.num_attention_heads}"
        )
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(
            f"model.tiny.num_attention_heads={cfg.num_attention_heads} must be divisible by "
            f"model.tiny.num_key_value_heads={cfg.num_key_value_heads}"
        )


def _train_tokenizer(cfg: TinyModelConfig, texts: Iterable[str]):
    """Byte-level BPE on `texts`, wrapped for transformers with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    # Byte-level: every string is encodable (no unk) and decodes back exactly, whatever the script.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Deterministic: merges are ranked by count, ties broken by token ids; tests/test_modeling.py checks
    # byte-identical builds across processes and thread counts (the cache is shared by runs and ranks).
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=cfg.max_position_embeddings,
        # Byte-level decoding is already exact; the clean-up would eat spaces before punctuation.
        clean_up_tokenization_spaces=False,
    )


def _build_model(cfg: TinyModelConfig, tok, seed: int):
    """Random-init LlamaForCausalLM sized by `cfg`, with eos/pad ids matching `tok`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    # A private RNG stream: seeding must not disturb the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model


def build_tiny_model(cfg: TinyModelConfig, texts: Iterable[str], out_dir: Path, seed: int = 0) -> Path:
    """Build (or reuse, when already complete) the tiny tokenizer + model folder at `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if _is_complete(out_dir):
            return out_dir
        raise FileExistsError(
            f"{out_dir} exists but is not a complete tiny model (missing one of {', '.join(REQUIRED_FILES)}); "
            "delete it and run again"
        )
    _check_sizes(cfg)
    tok = _train_tokenizer(cfg, texts)
    model = _build_model(cfg, tok, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a half-written folder is never visible under out_dir.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            # Another process (rank) finished the same deterministic build first: use theirs.
            if not _is_complete(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
