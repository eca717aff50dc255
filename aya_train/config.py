"""Typed configuration schema: the single source of truth for every field's type, default and meaning.

Recipes (YAML) only set values. Each dataclass is registered in Hydra's ConfigStore so that a recipe's
defaults list pulls in the schema (`/aya_train`) and one typed node per stage (`/stage@stages.NAME: KIND`,
schemas in aya_train.stage_config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    # Layout preset or a mapping {canonical_field: field_in_file} for anything else. Conversation presets:
    # auto, aya_dataset, aya_collection, alpaca, sharegpt, messages, chatterbot; preference presets: auto,
    # preference (prompt/chosen/rejected as strings or message lists, UltraFeedback-style).
    format: Any = "auto"
    # Language of every row, when the file does not say; any ISO 639-1/639-3 code or English name.
    language: Optional[str] = None
    # Task label of every row, when the file does not say.
    task: Optional[str] = None
    # Source label used in reports and mixtures; default: the file or folder name.
    name: Optional[str] = None
    # Split to read from a hub id or saved DatasetDict.
    split: str = "train"
    # Hub ids only: stream the rows instead of downloading and caching the whole data set first.
    streaming: bool = False


@dataclass
class MixtureLevelConfig:
    # Temperature: a group's share of its parent is proportional to weight * size**alpha (1 = natural
    # proportions, 0.5 = flattened, 0 = uniform).
    alpha: float = 1.0
    # Multiplicative weight per group name at this level (e.g. {sw: 2.0}); unnamed groups weigh 1.
    weights: Dict[str, float] = field(default_factory=dict)
    # Fixed share of the parent for named groups (e.g. {en: 0.2}); the rest is split by the rule above.
    shares: Dict[str, float] = field(default_factory=dict)
    # Repetition cap: a group takes at most max_epochs times its size; what it cannot take goes to its
    # siblings in proportion to their shares (UniMax). null = no cap.
    max_epochs: Optional[float] = None


@dataclass
class MixtureConfig:
    # Sampling levels, outermost first: a group's share is the product of its shares at each level.
    levels: List[str] = field(default_factory=lambda: ["source", "language", "task"])
    # Size of the training set in `unit`s; null = the natural size (every available row once).
    budget: Optional[int] = None
    # What budget and shares count: examples (rows) or tokens (chat template + the model's tokenizer).
    unit: str = "examples"
    # Per-level settings.
    source: MixtureLevelConfig = field(default_factory=MixtureLevelConfig)
    language: MixtureLevelConfig = field(default_factory=MixtureLevelConfig)
    task: MixtureLevelConfig = field(default_factory=MixtureLevelConfig)


@dataclass
class DataSetConfig:
    # Where the rows come from; all sources are read and concatenated in order.
    sources: List[SourceConfig] = field(default_factory=list)
    # Share of each language's rows held out for evaluation (at least one row when a language has two).
    eval_fraction: float = 0.1
    # Cap on held-out rows per language, so evaluation stays cheap for large languages.
    max_eval_rows_per_language: Optional[int] = 64
    # Keep only rows in these languages (codes or names, e.g. [fr, de, es] for a language-family branch);
    # other rows are left out and counted under `excluded`. null = every language. A language's held-out rows
    # are the same with or without the filter, so branches of one corpus never train on each other's eval rows.
    languages: Optional[List[str]] = None
    # Record kind: conversation (SFT) or preference (reward, DPO); null = implied by the sources' formats
    # (a preference preset or a mapping with chosen/rejected means preference), else conversation.
    kind: Optional[str] = None
    # A bad row: raise (stop at the first, naming file, line and reason; exit 2) or skip (write it to
    # <run>/data/<set>/quarantine.jsonl and count it per reason in the data report).
    on_error: str = "raise"
    # Rows longer than the stage's max_length after chat template + tokenizer: truncate (kept, cut by the
    # trainer, counted per language) or drop (a bad row: raised or quarantined per on_error).
    over_length: str = "truncate"
    # Preference rows whose prompt, chosen and rejected are identified as different languages: warn (kept,
    # counted), drop (a bad row: raised or quarantined per on_error) or ignore (not checked).
    language_mismatch: str = "warn"
    # How training rows are sampled by source, language and task (eval rows are never resampled).
    mixture: MixtureConfig = field(default_factory=MixtureConfig)


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


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    from aya_train.stage_config import STAGE_SCHEMAS  # stage schemas build on the types above

    cs = ConfigStore.instance()
    cs.store(name="aya_train", node=AyaConfig)
    for kind, schema in STAGE_SCHEMAS.items():
        cs.store(group="stage", name=kind, node=schema)
