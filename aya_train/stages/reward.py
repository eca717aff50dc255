"""Reward stage: a reward model (sequence classifier, one score) trained on preference pairs with trl's
RewardTrainer, evaluated per language and per task: `eval/reward_accuracy/<lang>` (share of held-out pairs
where chosen outscores rejected) and `eval/reward_margin/<lang>` (mean chosen - rejected score).

Life cycle: preference pairs (contrast pairs from conversations) -> init model as a classifier -> RewardConfig +
trainer -> train (resuming) -> final per-language eval -> save final/ and the per-language table.
"""

from __future__ import annotations

import logging
from collections import Counter

from trl import RewardConfig, RewardTrainer

from aya_train.data.contrast import as_preferences
from aya_train.metrics.per_language import PerLanguageTrainerMixin, eval_subsets, first_and_last, read_metrics
from aya_train.modeling import load_model, load_tokenizer, lora_config
from aya_train.stages.common import (
    StageContext, StageResult, attach_callbacks, save_final, train_resumable, trainer_args,
)

log = logging.getLogger("aya_train")
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


class AyaRewardTrainer(RewardTrainer, PerLanguageTrainerMixin):
    """trl's RewardTrainer with evaluation split per language and task, under the documented metric names."""

    metric_renames = {"accuracy": "reward_accuracy", "margin": "reward_margin"}


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    data = as_preferences(ctx.load_data(c.data), ctx.root.run.seed)
    path = ctx.full_model_path(c.init)
    tokenizer = load_tokenizer(ctx.root.model, path)
    # A causal LM folder loads with a fresh one-output score head on top of its body.
    model = load_model(ctx.root.model, path, task="seq_cls", num_labels=1, pad_token_id=tokenizer.pad_token_id)

    eval_sets = eval_subsets(data.eval, PAIR_COLUMNS)
    args = trainer_args(ctx, RewardConfig, has_eval=bool(eval_sets))
    trainer = AyaRewardTrainer(
        model=model,
        args=args,
        train_dataset=data.train.select_columns(PAIR_COLUMNS),
        eval_dataset=eval_sets or None,
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, "SEQ_CLS"),
    )
    dropped = count_dropped(trainer, data, eval_sets, ctx.name, c.max_length)
    attach_callbacks(ctx, trainer)
    train_resumable(trainer)
    if eval_sets and not (c.eval_steps and trainer.state.global_step % c.eval_steps == 0):
        trainer.evaluate()
    save_final(ctx, trainer, tokenizer)
    return StageResult(languages=language_table(ctx, data), data_fingerprint=data.fingerprint,
                       summary={"steps": trainer.state.global_step, "pairs_over_max_length": dropped})


def count_dropped(trainer, data, eval_sets, stage: str, max_length: int) -> dict:
    """trl leaves out pairs too long for max_length (RewardTrainer: the pair; DPOTrainer: the prompt alone);
    count them so none goes unnoticed."""
    dropped = {"train": len(data.train) - len(trainer.train_dataset)}
    if eval_sets:
        dropped["eval"] = len(eval_sets["all"]) - len(trainer.eval_dataset["all"])
    if any(dropped.values()):
        log.warning("%s: pairs longer than max_length=%d left out: %s (raise stages.%s.max_length to keep them)",
                    stage, max_length, dropped, stage)
    return dropped


def language_table(ctx: StageContext, data) -> dict:
    """Pairs per language with the held-out reward accuracy and margin before and after training."""
    records = read_metrics(ctx.stage_dir / "metrics.jsonl")
    accuracy, margin = first_and_last(records, "reward_accuracy"), first_and_last(records, "reward_margin")
    train, held_out = Counter(data.train["language"]), Counter(data.eval["language"])
    return {
        lang: {"train_pairs": train[lang], "eval_pairs": held_out[lang],
               "first_reward_accuracy": accuracy.get(lang, (None, None))[0],
               "reward_accuracy": accuracy.get(lang, (None, None))[1],
               "reward_margin": margin.get(lang, (None, None))[1]}
        for lang in sorted(train)
    }

