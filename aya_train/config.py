"""Typed configuration schema: the single source of truth for every field's type, default and meaning.

Recipes (YAML) only set values. Each dataclass is registered in Hydra's ConfigStore so that a recipe's
defaults list pulls in the schema (`/aya_train`) and one typed node per stage (`/stage@stages.NAME: KIND`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


# Field metadata marking a value that names an earlier stage; the pipeline checks and orders by it.
STAGE_REF = {"stage_ref": True}
# The same, for a reference the stage cannot do without (validation fails while it is null).
REQUIRED_STAGE_REF = {"stage_ref": True, "required": True}


@dataclass
class RunConfig:
    # Run name; outputs go to `<output_dir>/<name>/`. Every rank derives the same directory from it.
    name: str = "default"
    # Parent folder of all runs; relative paths are taken from the directory `aya-train` was started in.
    output_dir: str = "runs"
    # Global seed (model init, data split, shuffling).
    seed: int = 42
    # Resolve the config, print the stage graph and a data summary, train nothing.
    dry_run: bool = False
    # Run only these stages (by name); finished stages they depend on are reused from the run directory.
    only: Optional[List[str]] = None
    # Run this stage and every stage after it; earlier finished stages are reused. (`from` is a Python
    # keyword, hence the name.) Use either `only` or `from_stage`, not both.
    from_stage: Optional[str] = None
    # A stage whose config or inputs changed since its outputs (DONE or checkpoints) were written is
    # refused, so that finished work is never overwritten by accident; true discards those outputs and
    # runs the stage (and the stages reading it) again.
    force: bool = False
    # Trainer loggers, passed to transformers' `report_to` (e.g. [tensorboard], [wandb]); [] logs to files only.
    report_to: List[str] = field(default_factory=list)
    # Folder for caches shared across runs (built tiny models); default `<output_dir>/.cache`.
    cache_dir: Optional[str] = None


@dataclass
class TinyModelConfig:
    # Size of the byte-level BPE vocabulary trained on the demo corpus.
    vocab_size: int = 4096
    # Width of the random-init Llama-style model.
    hidden_size: int = 64
    # MLP width.
    intermediate_size: int = 256
    # Transformer blocks.
    num_hidden_layers: int = 2
    # Attention heads (hidden_size must divide by it).
    num_attention_heads: int = 4
    # Key/value heads (grouped-query attention); must divide num_attention_heads.
    num_key_value_heads: int = 2
    # Longest sequence the model accepts.
    max_position_embeddings: int = 1024


@dataclass
class ModelConfig:
    # Local folder or hub id of a causal LM; the reserved value `tiny` builds a random-init Llama-style
    # model and a multilingual tokenizer offline (sizes under `model.tiny`).
    name_or_path: str = MISSING
    # Hub revision (branch, tag or commit) when name_or_path is a hub id.
    revision: Optional[str] = None
    # Weight dtype: auto (bf16 on a bf16-capable GPU, else fp32), float32, bfloat16 or float16.
    dtype: str = "auto"
    # Attention kernel: auto (flash_attention_2 when installed on CUDA, else sdpa), flash_attention_2, sdpa, eager.
    attn_implementation: str = "auto"
    # Allow model code from the hub to run; off unless you trust the repository.
    trust_remote_code: bool = False
    # Jinja chat template (or path to a .jinja file) replacing the tokenizer's own; null keeps the tokenizer's.
    chat_template: Optional[str] = None
    # Activation checkpointing: saves memory on GPU; ignored on CPU, where it only slows training.
    gradient_checkpointing: bool = False
    # Sizes of the built-in tiny model, used when name_or_path is `tiny`.
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class LoraConfig:
    # Train a LoRA adapter instead of all weights.
    enabled: bool = False
    # Adapter rank.
    r: int = 16
    # Scaling numerator (effective scale alpha / r).
    alpha: int = 32
    # Dropout on the adapter input.
    dropout: float = 0.05
    # Modules to adapt; `all-linear` is peft's shorthand for every linear layer but the output head.
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    # Load the frozen base weights quantised with bitsandbytes (`4bit` = QLoRA, `8bit`); null = unquantised.
    # Needs a CUDA GPU and the bitsandbytes package.
    quantize: Optional[str] = None


@dataclass
class SourceConfig:
    # Local file (jsonl/json/parquet), folder of such files, saved `datasets` dir, hub id, or
    # `pkg://<module>/<subdir>` for data shipped inside an installed package.
    path: str = MISSING
    # Layout preset (auto, aya_dataset, sharegpt, messages, chatterbot) or a mapping
    # {canonical_field: field_in_file} for anything else.
    format: Any = "auto"
    # Language of every row, when the file does not say; any ISO 639-1/639-3 code or English name.
    language: Optional[str] = None
    # Task label of every row, when the file does not say.
    task: Optional[str] = None
    # Source label used in reports and mixtures; default: the file or folder name.
    name: Optional[str] = None
    # Split to read from a hub id or saved DatasetDict.
    split: str = "train"


@dataclass
class DataSetConfig:
    # Where the rows come from; all sources are read and concatenated in order.
    sources: List[SourceConfig] = field(default_factory=list)
    # Share of each language's rows held out for evaluation (at least one row when a language has two).
    eval_fraction: float = 0.1
    # Cap on held-out rows per language, so evaluation stays cheap for large languages.
    max_eval_rows_per_language: Optional[int] = 64


@dataclass
class StageConfig:
    # Stage kind; set by the `/stage@stages.NAME: KIND` defaults entry that creates the stage.
    kind: str = MISSING
    # Weights to start from: the name of an earlier stage, or null for `model.name_or_path`.
    init: Optional[str] = field(default=None, metadata=STAGE_REF)
    # Name of the data set (under `data.`) this stage trains on.
    data: Optional[str] = None
    # Optimiser steps; -1 trains for num_train_epochs instead.
    max_steps: int = -1
    # Passes over the training data when max_steps is -1.
    num_train_epochs: float = 1.0
    # Peak learning rate; null keeps trl's default for this trainer.
    learning_rate: Optional[float] = None
    # Sequences per device per step.
    per_device_train_batch_size: int = 8
    # Sequences per device per evaluation step.
    per_device_eval_batch_size: int = 8
    # Steps to accumulate before each optimiser update.
    gradient_accumulation_steps: int = 1
    # Linear warm-up: a number of steps, or a fraction of all steps when below 1.
    warmup_steps: float = 0.0
    # transformers scheduler name (linear, cosine, constant, ...).
    lr_scheduler_type: str = "linear"
    # Log training metrics every N steps.
    logging_steps: int = 10
    # Evaluate per language every N steps (and once before training); null = only at the end.
    eval_steps: Optional[int] = None
    # Save a resumable checkpoint every N steps.
    save_steps: int = 500
    # Keep at most this many checkpoints (oldest removed first).
    save_total_limit: Optional[int] = 2
    # Longest tokenised sequence; longer ones are truncated by trl.
    max_length: int = 1024
    # LoRA / QLoRA adapter settings.
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Any other field of the trl config class of this stage (e.g. SFTConfig), passed through unchanged;
    # keys are checked against that class, and typed fields above cannot be repeated here.
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTStageConfig(StageConfig):
    kind: str = "sft"
    # Train on the assistant turns only (their end token included); needs `{% generation %}` markers
    # in the chat template, as the built-in tiny tokenizer has.
    assistant_only_loss: bool = True
    # Pack several conversations per sequence (trl's best-fit decreasing); no padding tokens are trained.
    packing: bool = True


@dataclass
class ExportStageConfig:
    # Stage kind; set by the `/stage@stages.NAME: export` defaults entry.
    kind: str = "export"
    # The earlier stage whose model is exported (LoRA adapters are merged into the base weights).
    model: Optional[str] = field(default=None, metadata=REQUIRED_STAGE_REF)
    # Largest safetensors file; bigger models are split into shards with an index (transformers' format).
    max_shard_size: str = "5GB"
    # GenerationConfig fields saved with the model (e.g. {temperature: 0.7, top_p: 0.9, max_new_tokens: 512});
    # eos and pad always come from the tokenizer.
    generation: Dict[str, Any] = field(default_factory=dict)
    # Hub license identifier for the model card (e.g. apache-2.0, cc-by-nc-4.0); null leaves it unset.
    license: Optional[str] = None
    # Extra model card tags; `aya-train`, `multilingual` and the stage kinds are always added.
    tags: List[str] = field(default_factory=list)
    # Upload the exported folder with huggingface_hub. The token comes from HF_TOKEN or `hf auth login`
    # and is never written anywhere.
    push_to_hub: bool = False
    # Hub repository `owner/name` to push to (created when missing).
    hub_model_id: Optional[str] = None
    # Create the repository private (only when it does not exist yet).
    hub_private_repo: bool = True
    # Branch to push to (created from main when missing); null = main.
    hub_revision: Optional[str] = None
    # List the files push_to_hub would upload, and where, without touching the network.
    hub_dry_run: bool = False


@dataclass
class AyaConfig:
    # How and where this run executes.
    run: RunConfig = field(default_factory=RunConfig)
    # Base model and tokenizer.
    model: ModelConfig = field(default_factory=ModelConfig)
    # Named data sets; a stage refers to one by name in its `data` field.
    data: Dict[str, DataSetConfig] = field(default_factory=dict)
    # Ordered stages; each is created by a `/stage@stages.NAME: KIND` defaults entry and runs in order.
    stages: Dict[str, Any] = field(default_factory=dict)


# Stage kind -> its schema; the registry in aya_train.stages maps the same kinds to their runners.
STAGE_SCHEMAS: Dict[str, type] = {"sft": SFTStageConfig, "export": ExportStageConfig}


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="aya_train", node=AyaConfig)
    for kind, schema in STAGE_SCHEMAS.items():
        cs.store(group="stage", name=kind, node=schema)
