"""Models, tokenizers, precision and adapters: every place where aya_train touches weights.

The built-in tiny model (a byte-level BPE tokenizer plus a random-init Llama) lives in
`aya_train.tiny_model`; its two public functions are re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from aya_train.config import LoraConfig, ModelConfig
from aya_train.tiny_model import build_tiny_model, tiny_model_fingerprint

__all__ = [
    "on_gpu",
    "resolve_dtype",
    "resolve_attn_implementation",
    "precision_args",
    "build_tiny_model",
    "tiny_model_fingerprint",
    "load_tokenizer",
    "load_model",
    "lora_config",
    "quantization_config",
    "merge_adapter_if_any",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")
TASKS = ("causal_lm", "seq_cls")
PEFT_TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")
QUANTIZE_MODES = ("4bit", "8bit")
# Written last into a merged folder: the hash of the adapter it was merged from (see merge_adapter_if_any).
MERGE_STAMP = "aya_merged_from.json"


def on_gpu() -> bool:
    """True when a CUDA device is available."""
    return torch.cuda.is_available()


def resolve_dtype(name: str) -> torch.dtype:
    """Turn `model.dtype` into a torch dtype; `auto` is bf16 on a bf16-capable GPU, else fp32."""
    if name == "auto":
        return torch.bfloat16 if on_gpu() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn_implementation(name: str) -> str:
    """Turn `model.attn_implementation` into a transformers attention kernel name."""
    if name == "auto":
        return "flash_attention_2" if _flash_attn_installed() and on_gpu() else "sdpa"
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"model.attn_implementation={name!r} is not supported; use one of: auto, {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if name == "flash_attention_2" and not _flash_attn_installed():
        raise ValueError(
            "model.attn_implementation=flash_attention_2 needs the flash_attn package: "
            "`pip install aya-train[gpu]` (CUDA only), or set model.attn_implementation=sdpa"
        )
    return name


def _checkpointing_arg() -> str:
    """TrainingArguments' name for activation checkpointing (`gradient_checkpointing` is deprecated in 5.2x)."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def precision_args(model_cfg: ModelConfig) -> dict[str, Any]:
    """Keyword args for a TrainingArguments subclass that are safe on this machine's hardware."""
    # Always set explicitly: trl configs default to bf16=True and to checkpointing on.
    if not on_gpu():
        # bf16 autocast breaks on CPU, and checkpointing only slows a CPU run down.
        return {"use_cpu": True, "bf16": False, "fp16": False, _checkpointing_arg(): False}
    dtype = resolve_dtype(model_cfg.dtype)
    # transformers 5 checkpoints non-reentrantly by default, which LoRA's frozen inputs need.
    return {
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        _checkpointing_arg(): bool(model_cfg.gradient_checkpointing),
    }


def _read_chat_template(value: str) -> str:
    """A Jinja template given inline, or the contents of the file it names."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(
            f"model.chat_template={value!r} is neither a Jinja template nor an existing file; "
            "give the template text or the path to a .jinja file"
        )
    return path.read_text(encoding="utf-8")


def load_tokenizer(model_cfg: ModelConfig, path: str) -> Any:
    """Load the tokenizer at `path`, apply `model.chat_template`, and make sure it can pad."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if model_cfg.chat_template:
        tok.chat_template = _read_chat_template(model_cfg.chat_template)
    if not tok.chat_template:
        raise ValueError(
            f"The tokenizer at {path} has no chat template; set model.chat_template to a Jinja template "
            "or to the path of a .jinja file"
        )
    if tok.pad_token is None:
        # Padded positions are masked out of the loss, so reusing eos is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model_cfg: ModelConfig,
    path: str,
    *,
    task: str = "causal_lm",
    num_labels: int = 1,
    pad_token_id: int | None = None,
    quantization_config: Any = None,
) -> Any:
    """Load a causal LM (`causal_lm`) or a sequence classifier (`seq_cls`) from a folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ValueError(f"load_model(task={task!r}): use one of {', '.join(TASKS)}")
    kwargs: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "use_safetensors": True,
        "dtype": resolve_dtype(model_cfg.dtype),
        "attn_implementation": resolve_attn_implementation(model_cfg.attn_implementation),
    }
    if quantization_config is not None:
        from accelerate import PartialState

        # Quantised weights are placed at load time: each process puts its copy on its own GPU.
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": PartialState().local_process_index}
    if task == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    if model.config.pad_token_id is None and pad_token_id is not None:
        # The classifier reads the score at the last non-pad token; without a pad id it cannot find it.
        model.config.pad_token_id = pad_token_id
    return model


def lora_config(lora: LoraConfig, task_type: str) -> Any:
    """A peft LoraConfig for `lora`, or None when LoRA is off."""
    if not lora.enabled:
        return None
    import peft

    if task_type not in PEFT_TASK_TYPES:
        raise ValueError(f"lora_config(task_type={task_type!r}): use one of {', '.join(PEFT_TASK_TYPES)}")
    modules = list(lora.target_modules)
    if not modules:
        raise ValueError("lora.target_modules is empty; use [all-linear] or name the modules to adapt")
    if "all-linear" in modules and len(modules) > 1:
        raise ValueError(f"lora.target_modules={modules}: `all-linear` already covers every linear layer; use it alone")
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # peft recognises the shorthand only as a plain string, not inside a list.
        target_modules="all-linear" if modules == ["all-linear"] else modules,
        task_type=task_type,
    )


def quantization_config(lora: LoraConfig) -> Any:
    """A bitsandbytes config for `lora.quantize` (4bit = QLoRA nf4, 8bit), or None when unquantised."""
    if lora.quantize is None:
        return None
    if lora.quantize not in QUANTIZE_MODES:
        raise ValueError(f"lora.quantize={lora.quantize!r} is not supported; use 4bit, 8bit or null")
    if not lora.enabled:
        raise ValueError(
            f"lora.quantize={lora.quantize} needs lora.enabled=true: "
            "quantised weights are frozen, only an adapter can train"
        )
    if not on_gpu():
        raise ValueError(f"lora.quantize={lora.quantize} needs a CUDA GPU; set lora.quantize=null to train on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"lora.quantize={lora.quantize} needs the bitsandbytes package: `pip install bitsandbytes`, "
            "or set lora.quantize=null"
        )
    from transformers import BitsAndBytesConfig

    if lora.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _adapter_fingerprint(adapter_dir: Path) -> str:
    """Hash of an adapter folder's config and weights: a merged folder is reused only for the same adapter."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        file = adapter_dir / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _merged_from(folder: Path) -> dict[str, str] | None:
    """The stamp of a merged folder, or None when there is none."""
    stamp_file = folder / MERGE_STAMP
    return json.loads(stamp_file.read_text(encoding="utf-8")) if stamp_file.is_file() else None


def merge_adapter_if_any(path: str, model_cfg: ModelConfig, out_dir: Path, *, num_labels: int = 1) -> str:
    """Merge the peft adapter at `path` into its base model, saved under `out_dir`; other paths pass through."""
    adapter_dir = Path(path)
    if not (adapter_dir / "adapter_config.json").is_file():
        return path
    import peft
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    stamp = {"adapter": str(adapter_dir.resolve()), "sha256": _adapter_fingerprint(adapter_dir)}
    if _merged_from(out_dir) == stamp:
        # Merged earlier from these exact adapter bytes (or by another rank): reuse it.
        return str(out_dir)

    adapter_cfg = peft.PeftConfig.from_pretrained(str(adapter_dir))
    task = "seq_cls" if adapter_cfg.task_type == "SEQ_CLS" else "causal_lm"
    # Never quantised: an adapter is merged into full-precision base weights.
    base = load_model(model_cfg, adapter_cfg.base_model_name_or_path, task=task, num_labels=num_labels)
    merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    # The training stage saves its tokenizer next to the adapter; fall back to the base model's.
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(
        str(adapter_dir) if has_tokenizer else adapter_cfg.base_model_name_or_path,
        revision=None if has_tokenizer else model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp)  # transformers 5 writes safetensors only
        tok.save_pretrained(tmp)
        (tmp / MERGE_STAMP).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # stale: merged from another adapter
        try:
            os.replace(tmp, out_dir)
        except OSError:
            # Another process merged the same adapter in the meantime: use theirs.
            if _merged_from(out_dir) != stamp:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out_dir)
