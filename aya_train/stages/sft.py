"""SFT stage: multilingual instruction fine-tuning with trl's SFTTrainer.

Life cycle: load data and model -> build SFTConfig + trainer (batching chosen for the attention kernel, prepared
data from the cache) -> train (resuming) -> final eval -> save final/ and the per-language table.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import trl
from datasets import Dataset
from datasets.table import InMemoryTable
from trl import SFTConfig, SFTTrainer

from aya_train.batching import PackedRowsCollator, resolve_batching, sft_batching_args
from aya_train.data.tokens import ASSISTANT_MASKS, INPUT_IDS
from aya_train.metrics.per_language import PerLanguageTrainerMixin, eval_subsets, first_and_last, read_metrics
from aya_train.modeling import load_model, load_tokenizer, lora_config, resolve_attn_implementation
from aya_train.stages.common import (
    StageContext, StageResult, attach_callbacks, save_final, train_resumable, trainer_args,
)
from aya_train.stages.prep_cache import PreparedDataCache, cache_root, prepared_key, tokenizer_fingerprint

TOKEN_COUNTS = "train_token_counts.json"
TRAINER_COLUMNS = ("messages", INPUT_IDS, ASSISTANT_MASKS)  # what the trainer is given of each row


class AyaSFTTrainer(SFTTrainer, PerLanguageTrainerMixin):
    """trl's SFTTrainer with evaluation and logs split per language and task, and its dataset preparation
    (template, tokenise, labels, truncate, pack) read from a `PreparedDataCache` when one is given."""

    def __init__(self, *args, prepared_cache: Optional[PreparedDataCache] = None, **kwargs):
        # Set before trl's __init__, which prepares the datasets.
        self.prepared_cache = prepared_cache
        self.prepared_keys: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        tokens = [c for c in (INPUT_IDS, ASSISTANT_MASKS) if c in (dataset.column_names or [])]
        rows = dataset.remove_columns(tokens) if tokens else dataset
        if self.chat_template is not None:
            dataset = rows  # the loader tokenised with the tokenizer's own template, not this one: trl tokenises
        cache = self.prepared_cache
        if cache is None or formatting_func is not None or not isinstance(dataset, Dataset):
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        settings = {
            "trl": trl.__version__, "max_length": args.max_length, "truncation_mode": args.truncation_mode,
            "packing": packing, "packing_strategy": args.packing_strategy if packing else None,
            "assistant_only_loss": args.assistant_only_loss, "completion_only_loss": self.completion_only_loss,
            "dataset_text_field": args.dataset_text_field, "eos_token": args.eos_token, "pad_token": args.pad_token,
            "shuffle": args.shuffle_dataset, "seed": args.seed if args.shuffle_dataset else None,
        }
        # keyed by the rows alone: the loader's token columns equal what trl would compute from them
        key = prepared_key(rows, tokenizer_fingerprint(processing_class, self.chat_template), settings)
        self.prepared_keys[dataset_name] = key
        return cache.get_or_build(
            key, lambda: super(AyaSFTTrainer, self)._prepare_dataset(
                dataset, processing_class, args, packing, formatting_func, dataset_name),
            description=f"sft {dataset_name}: {len(dataset)} rows",
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rows = inputs.get("position_ids")
        if self.model.training and "attention_mask" not in inputs and rows is not None and rows.size(0) > 1:
            # trl's num_tokens counts one row when there is no attention mask (it expects one flattened row);
            # packed_rows batches have several: count the rest.
            extra = torch.tensor(rows.numel() - rows.size(1), device=rows.device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(extra).sum().item() // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result


def stage_batching(ctx: StageContext) -> str:
    """The batching this stage trains with: `batching` resolved for the model's attention kernel."""
    return resolve_batching(ctx.cfg.batching, resolve_attn_implementation(ctx.root.model.attn_implementation))


def with_token_columns(rows: Dataset, encoded: Optional[pa.Table], assistant_only_loss: bool) -> Dataset:
    """`rows` with the token columns the data loader kept (input_ids, and assistant_masks under
    assistant_only_loss): exactly what trl's SFTTrainer would compute, so it takes the rows as tokenised and
    does not tokenise them again. `rows` unchanged when the loader kept none, or when a row has no assistant
    token (trl's own tokenising then raises its error for that row)."""
    columns = [INPUT_IDS, ASSISTANT_MASKS] if assistant_only_loss else [INPUT_IDS]
    if encoded is None or not set(columns) <= set(encoded.column_names) or encoded.num_rows != len(rows):
        return rows
    if assistant_only_loss and len(rows):
        masks = encoded.column(ASSISTANT_MASKS).combine_chunks()
        per_row = np.bincount(pc.list_parent_indices(masks), weights=pc.list_flatten(masks), minlength=len(masks))
        if (per_row == 0).any():
            return rows
    table = rows.with_format("arrow")[:]
    for name in columns:
        table = table.append_column(name, encoded.column(name))
    return Dataset(InMemoryTable(table))


def trainer_columns(rows: Dataset) -> list:
    """The columns of `rows` the trainer is given: messages, and the token columns when attached."""
    return [c for c in TRAINER_COLUMNS if c in rows.column_names]


def build_trainer(ctx: StageContext, data, tokenizer, model) -> AyaSFTTrainer:
    """The stage's trainer: batching resolved for the model's attention kernel, prepared data cached."""
    c = ctx.cfg
    batching = stage_batching(ctx)
    train = with_token_columns(data.train, data.train_encoded, c.assistant_only_loss)
    eval_rows = with_token_columns(data.eval, data.eval_encoded, c.assistant_only_loss)
    eval_sets = eval_subsets(eval_rows, trainer_columns(eval_rows))
    args = trainer_args(
        ctx, SFTConfig, has_eval=bool(eval_sets),
        assistant_only_loss=c.assistant_only_loss,
        **sft_batching_args(batching),
    )
    trainer = AyaSFTTrainer(
        model=model,
        args=args,
        train_dataset=train.select_columns(trainer_columns(train)),
        eval_dataset=eval_sets or None,
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, "CAUSAL_LM"),
        prepared_cache=PreparedDataCache(cache_root(ctx.root.run), write=ctx.state.is_main_process),
    )
    if batching == "packed_rows":
        # trl flattens packed rows into one (padding-free); keep them apart (see aya_train.batching).
        trainer.data_collator = PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)
    trainer.batching = batching
    return trainer


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    stage_batching(ctx)  # a batching the attention kernel cannot honour stops here, before anything loads
    data = ctx.load_data(c.data)
    path = ctx.model_path(c.init)
    tokenizer = load_tokenizer(ctx.root.model, path)
    model = load_model(ctx.root.model, path)

    trainer = build_trainer(ctx, data, tokenizer, model)
    attach_callbacks(ctx, trainer)
    train_resumable(trainer)
    if trainer.eval_dataset and not (c.eval_steps and trainer.state.global_step % c.eval_steps == 0):
        trainer.evaluate()
    save_final(ctx, trainer, tokenizer)
    return StageResult(languages=language_table(ctx, data, tokenizer, trainer), data_fingerprint=data.fingerprint,
                       summary={"steps": trainer.state.global_step, "batching": trainer.batching})


def token_counts(data, tokenizer) -> list:
    """Tokens of each training conversation (chat template applied), in row order."""
    return list(data.train.map(
        lambda batch: {"n_tokens": [len(ids) for ids in tokenizer.apply_chat_template(batch["messages"], return_dict=True)["input_ids"]]},
        batched=True, remove_columns=data.train.column_names, desc="counting tokens",
    )["n_tokens"])


def language_table(ctx: StageContext, data, tokenizer, trainer: AyaSFTTrainer) -> dict:
    """Rows and tokens trained per language, with the first and last eval loss."""
    cache, key = trainer.prepared_cache, trainer.prepared_keys.get("train")
    # Counted when the data was loaded, or once per prepared data set and kept next to it: a rerun does not
    # tokenise for this table either.
    lengths = data.train_tokens
    if lengths is None and key:
        lengths = cache.read_json(key, TOKEN_COUNTS)
    if lengths is None:
        lengths = token_counts(data, tokenizer)
        if key:
            cache.write_json(key, TOKEN_COUNTS, lengths)
    languages = list(data.train["language"])
    rows, tokens = Counter(languages), Counter()
    for language, n in zip(languages, lengths):
        tokens[language] += int(n)
    losses = first_and_last(read_metrics(ctx.stage_dir / "metrics.jsonl"), "loss")
    return {
        lang: {"rows": rows[lang], "tokens": tokens[lang],
               "first_eval_loss": losses.get(lang, (None, None))[0], "last_eval_loss": losses.get(lang, (None, None))[1]}
        for lang in sorted(rows)
    }
