"""What every stage shares: its context, trl config arguments, resume, and saving the final model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf
from transformers.trainer_utils import get_last_checkpoint

from aya_train.artifacts import RunDir
from aya_train.modeling import precision_args


# Sub-folder of a stage kept when the stage restarts with other inputs: its entries are keyed by their own inputs.
CACHE_DIR = "cache"


@dataclass
class StageContext:
    """Everything a stage needs, resolved by the pipeline."""

    name: str
    cfg: DictConfig  # this stage's typed config (stages.<name>)
    root: DictConfig  # the whole run config
    run_dir: RunDir
    base_model: str  # resolved model.name_or_path (the built tiny model's folder for `tiny`)
    load_data: Callable[[str], Any]  # data set name -> aya_train.data.loading.LoadedData (cached per run)
    state: PartialState

    @property
    def stage_dir(self) -> Path:
        return self.run_dir.stage_dir(self.name)

    @property
    def final_dir(self) -> Path:
        return self.run_dir.final_dir(self.name)

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoints"

    def model_path(self, ref: Optional[str]) -> str:
        """Folder of the model a reference names: an earlier stage's final/, or the base model."""
        return str(self.run_dir.final_dir(ref)) if ref else self.base_model

    @property
    def cache_dir(self) -> Path:
        return self.stage_dir / CACHE_DIR

    def full_model_path(self, ref: Optional[str], num_labels: int = 1) -> str:
        """Like model_path, with a LoRA adapter merged into its base first (into this stage's cache), so the
        model really is the earlier stage's result (a PeftModel with the adapter off would be its base)."""
        from aya_train.modeling import merge_adapter_if_any

        path = self.model_path(ref)
        with self.state.main_process_first():
            return merge_adapter_if_any(path, self.root.model, self.cache_dir / f"merged-{ref or 'base'}",
                                        num_labels=num_labels)


@dataclass
class StageResult:
    """What the pipeline records in the manifest and prints at the end."""

    # Per-language summary rows for the final table: {language: {column: value}}.
    languages: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Lineage: fingerprints of the data the stage consumed.
    data_fingerprint: Optional[str] = None
    # Aggregate figures worth a line in the manifest (final eval loss, accuracy, ...).
    summary: Dict[str, Any] = field(default_factory=dict)


def trainer_args(ctx: StageContext, config_cls: type, has_eval: bool, **stage_specific: Any):
    """Build a trl config (SFTConfig, DPOConfig, ...) from the typed stage fields and the `args` passthrough."""
    c, run = ctx.cfg, ctx.root.run
    kwargs: Dict[str, Any] = dict(
        output_dir=str(ctx.checkpoint_dir),
        max_steps=c.max_steps,
        num_train_epochs=c.num_train_epochs,
        per_device_train_batch_size=c.per_device_train_batch_size,
        per_device_eval_batch_size=c.per_device_eval_batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps,
        warmup_steps=c.warmup_steps,
        lr_scheduler_type=c.lr_scheduler_type,
        logging_steps=c.logging_steps,
        save_steps=c.save_steps,
        save_total_limit=c.save_total_limit,
        seed=run.seed,
        report_to=list(run.report_to) or "none",
        eval_strategy="steps" if has_eval and c.eval_steps else "no",
        eval_steps=c.eval_steps,
        # A first evaluation before training gives every language its starting point.
        eval_on_start=has_eval,
        **precision_args(ctx.root.model),
    )
    if c.learning_rate is not None:
        kwargs["learning_rate"] = c.learning_rate
    if "max_length" in {f.name for f in dataclasses.fields(config_cls)}:
        kwargs["max_length"] = c.max_length
    kwargs.update(stage_specific)
    kwargs.update(OmegaConf.to_container(c.args, resolve=True))
    return config_cls(**kwargs)


def attach_callbacks(ctx: StageContext, trainer) -> None:
    """metrics.jsonl for every log, and a progress bar that keeps per-language lines off the terminal."""
    from transformers.trainer_callback import ProgressCallback

    from aya_train.metrics.per_language import MetricsFileCallback, QuietProgressCallback

    trainer.add_callback(MetricsFileCallback(ctx.stage_dir / "metrics.jsonl"))
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback)


def train_resumable(trainer) -> None:
    """Train, continuing from the newest complete checkpoint of an interrupted attempt."""
    last = get_last_checkpoint(trainer.args.output_dir) if Path(trainer.args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)


def save_final(ctx: StageContext, trainer, tokenizer) -> None:
    """Save the trained model (adapter or full weights, safetensors) and tokenizer to <stage>/final."""
    trainer.save_model(str(ctx.final_dir))
    if ctx.state.is_main_process:
        tokenizer.save_pretrained(str(ctx.final_dir))
    ctx.state.wait_for_everyone()
