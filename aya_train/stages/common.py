"""What every stage shares: its context, trl config arguments, resume, and saving the final model.

Crash safety: the Trainer writes `trainer_state.json` last into a checkpoint, so a checkpoint without a
readable one (a kill during the save) is incomplete; it is deleted, never resumed. Each checkpoint also
records how long metrics.jsonl was when it was saved, so a resumed run's log equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from aya_train.artifacts import RunDir, atomic_write_json, atomic_write_text
from aya_train.modeling import precision_args

log = logging.getLogger("aya_train")
# Written by CheckpointMetricsCallback into each checkpoint: metrics.jsonl's length when it was saved.
CHECKPOINT_METRICS = "aya_metrics.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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
    """metrics.jsonl for every log, its length in every checkpoint, and a progress bar that keeps
    per-language lines off the terminal."""
    from transformers.trainer_callback import ProgressCallback

    from aya_train.metrics.per_language import MetricsFileCallback, QuietProgressCallback

    trainer.add_callback(MetricsFileCallback(ctx.stage_dir / "metrics.jsonl"))
    trainer.add_callback(CheckpointMetricsCallback(ctx.stage_dir / "metrics.jsonl"))
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback)


class CheckpointMetricsCallback(TrainerCallback):
    """After each save, record metrics.jsonl's length in the checkpoint: a resume truncates the log to it."""

    def __init__(self, metrics_path: Path):
        self.metrics_path = metrics_path

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            size = self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0
            if checkpoint.is_dir():
                atomic_write_json(checkpoint / CHECKPOINT_METRICS, {"step": state.global_step, "metrics_bytes": size})


def checkpoint_step(path: Path) -> Optional[int]:
    """N for a `checkpoint-N` folder whose trainer_state.json (written last by the Trainer) is readable
    and says step N; None for anything else, e.g. a checkpoint cut short by a kill during the save."""
    match = _CHECKPOINT_RE.match(path.name)
    if not match or not path.is_dir():
        return None
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = int(match.group(1))
    return step if state.get("global_step") == step else None


def last_complete_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint under a stage's checkpoints/ folder, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete = [(step, p) for p in output_dir.iterdir() if (step := checkpoint_step(p)) is not None]
    return max(complete)[1] if complete else None


def incomplete_checkpoints(output_dir: Path) -> List[Path]:
    """checkpoint-N folders a kill left half-written."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return [p for p in output_dir.iterdir() if _CHECKPOINT_RE.match(p.name) and checkpoint_step(p) is None]


def truncate_metrics(metrics_path: Path, checkpoint: Optional[Path]) -> None:
    """Cut metrics.jsonl back to what it held when `checkpoint` was saved (empty when starting afresh)."""
    if not metrics_path.is_file():
        return
    if checkpoint is None:
        metrics_path.unlink()
        return
    meta = checkpoint / CHECKPOINT_METRICS
    if meta.is_file():
        size = json.loads(meta.read_text(encoding="utf-8"))["metrics_bytes"]
        if metrics_path.stat().st_size > size:
            os.truncate(metrics_path, size)
        return
    # Killed between the Trainer's save and our note: keep the records logged up to that step.
    step = checkpoint_step(checkpoint)
    lines = metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and line.endswith("\n") and json.loads(line).get("step", 0) <= step]
    atomic_write_text(metrics_path, "".join(kept))


def train_resumable(trainer, metrics_path: Optional[Path] = None) -> None:
    """Train, continuing from the newest complete checkpoint of an interrupted attempt (same data order:
    the Trainer restores optimizer, scheduler and RNG states and skips the batches already seen).

    Half-written checkpoints are deleted, and metrics.jsonl (default: next to checkpoints/) is cut back to
    the resumed checkpoint, so the log reads as if the run had never stopped."""
    from aya_train.metrics.per_language import read_metrics

    state = PartialState()
    output_dir = Path(trainer.args.output_dir)
    metrics_path = metrics_path or output_dir.parent / "metrics.jsonl"
    last = last_complete_checkpoint(output_dir)
    broken = incomplete_checkpoints(output_dir)
    state.wait_for_everyone()  # every rank has chosen before rank 0 changes anything
    if state.is_main_process:
        for path in broken:
            log.warning("deleting incomplete checkpoint %s (the process was killed while saving it)", path)
            shutil.rmtree(path)
        truncate_metrics(metrics_path, last)
    state.wait_for_everyone()
    if last is not None:
        log.info("resuming from %s", last)
        # The first evaluation was logged before the kill; repeating it would log step N twice.
        trainer.args.eval_on_start = False
        if hasattr(trainer, "_total_train_tokens"):
            # trl counts trained tokens in the trainer, not in the checkpoint: carry the count on from the log.
            counts = [r["train/num_tokens"] for r in read_metrics(metrics_path) if "train/num_tokens" in r]
            trainer._total_train_tokens = counts[-1] if counts else 0
    # What exists now (modules, model, data, trainer) lives through training: leave it out of the garbage
    # collector's full passes (each one walks ~500k objects), and hand it back after, so that the stage's
    # model and trainer can be collected when the stage ends.
    gc.freeze()
    try:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    finally:
        gc.unfreeze()


def save_final(ctx: StageContext, trainer, tokenizer) -> None:
    """Save the trained model (adapter or full weights, safetensors) and tokenizer to <stage>/final,
    through a temporary folder renamed at the end: final/ is either absent or complete."""
    partial = ctx.stage_dir / ".final.partial"
    if ctx.state.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    ctx.state.wait_for_everyone()
    trainer.save_model(str(partial))
    if ctx.state.is_main_process:
        tokenizer.save_pretrained(str(partial))
        replace_dir(partial, ctx.final_dir)
    ctx.state.wait_for_everyone()


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place, replacing an older one (a kill in between leaves none, never half)."""
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
