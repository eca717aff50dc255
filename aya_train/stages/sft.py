"""SFT stage: multilingual instruction fine-tuning with trl's SFTTrainer.

Life cycle: load data and model -> build SFTConfig + trainer -> train (resuming) -> final eval ->
save final/ and the per-language table.
"""

from __future__ import annotations

from collections import Counter

from trl import SFTConfig, SFTTrainer

from aya_train.metrics.per_language import PerLanguageTrainerMixin, eval_subsets, first_and_last, read_metrics
from aya_train.modeling import load_model, load_tokenizer, lora_config
from aya_train.stages.common import (
    StageContext, StageResult, attach_callbacks, save_final, train_resumable, trainer_args,
)


class AyaSFTTrainer(SFTTrainer, PerLanguageTrainerMixin):
    """trl's SFTTrainer with evaluation and logs split per language and task."""


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    data = ctx.load_data(c.data)
    path = ctx.model_path(c.init)
    tokenizer = load_tokenizer(ctx.root.model, path)
    model = load_model(ctx.root.model, path)

    eval_sets = eval_subsets(data.eval, ["messages"])
    args = trainer_args(
        ctx, SFTConfig, has_eval=bool(eval_sets),
        packing=c.packing,
        assistant_only_loss=c.assistant_only_loss,
    )
    trainer = AyaSFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train.select_columns(["messages"]),
        eval_dataset=eval_sets or None,
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, "CAUSAL_LM"),
    )
    attach_callbacks(ctx, trainer)
    train_resumable(trainer)
    if eval_sets and not (c.eval_steps and trainer.state.global_step % c.eval_steps == 0):
        trainer.evaluate()
    save_final(ctx, trainer, tokenizer)
    return StageResult(languages=language_table(ctx, data, tokenizer), data_fingerprint=data.fingerprint,
                       summary={"steps": trainer.state.global_step})


def language_table(ctx: StageContext, data, tokenizer) -> dict:
    """Rows and tokens trained per language, with the first and last eval loss."""
    lengths = data.train.map(
        lambda batch: {"n_tokens": [len(ids) for ids in tokenizer.apply_chat_template(batch["messages"], return_dict=True)["input_ids"]]},
        batched=True, remove_columns=data.train.column_names, desc="counting tokens",
    )["n_tokens"]
    rows, tokens = Counter(data.train["language"]), Counter()
    for language, n in zip(data.train["language"], lengths):
        tokens[language] += n
    losses = first_and_last(read_metrics(ctx.stage_dir / "metrics.jsonl"), "loss")
    return {
        lang: {"rows": rows[lang], "tokens": tokens[lang],
               "first_eval_loss": losses.get(lang, (None, None))[0], "last_eval_loss": losses.get(lang, (None, None))[1]}
        for lang in sorted(rows)
    }
