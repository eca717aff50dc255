"""DPO stage: offline preference optimisation with trl's DPOTrainer (any of its loss types, or a weighted
mixture), evaluated per language and task: `eval/reward_accuracy/<lang>`, `eval/reward_margin/<lang>`,
`eval/logps_chosen/<lang>`, `eval/logps_rejected/<lang>`, and the language fidelity of the init and trained
policies on held-out prompts.

The reference is a named earlier stage (default: the init), with a LoRA adapter merged into its base first:
a PeftModel with its adapter switched off would be the model *before* SFT. Reference log-probs are computed
once and cached in `<stage>/cache/ref_logps/`, keyed by the reference weights, the tokenised pairs and the
length limits, not by beta: a resume or another beta reuses them.

Life cycle: pairs -> policy + reference -> DPOConfig + trainer (reference log-probs: cache or compute) ->
train (resuming) -> final eval -> save final/ -> held-out fidelity -> per-language table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

from accelerate.utils import broadcast_object_list
from datasets import Dataset, concatenate_datasets, load_from_disk
from trl import DPOConfig, DPOTrainer

from aya_train.artifacts import atomic_write_json
from aya_train.data.contrast import as_preferences, as_prompts
from aya_train.data.loading import fingerprint
from aya_train.metrics.fidelity import measure_policies
from aya_train.metrics.per_language import PerLanguageTrainerMixin, eval_subsets, first_and_last, read_metrics
from aya_train.modeling import load_model, load_tokenizer, lora_config
from aya_train.stages.reward import count_dropped
from aya_train.stages.common import (
    StageContext, StageResult, attach_callbacks, save_final, train_resumable, trainer_args,
)

log = logging.getLogger("aya_train")
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]
REF_COLUMNS = ["ref_chosen_logps", "ref_rejected_logps"]
# DPOConfig fields that change the reference log-probs (besides the reference weights and the token ids).
REF_INPUT_FIELDS = ("max_length", "truncation_mode", "ld_alpha")


class AyaDPOTrainer(DPOTrainer, PerLanguageTrainerMixin):
    """trl's DPOTrainer with per-language evaluation and a persistent reference log-prob cache."""

    metric_renames = {
        "rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
        "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
        "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected",
        "logits/chosen": "logits_chosen", "logits/rejected": "logits_rejected",
    }

    def __init__(self, *args, ref_cache_dir: Optional[Path] = None, **kwargs):
        self.ref_cache_dir = ref_cache_dir
        self.ref_cache_events: Dict[str, str] = {}  # split name -> "reused" | "computed"
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        if len(dataset) == 0:
            raise ValueError(f"dpo: every pair of the `{name}` split has a prompt longer than max_length="
                             f"{self.args.max_length} tokens; raise stages.<name>.max_length")
        if self.ref_cache_dir is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        key = [ref_cache_key(self._precompute_model_hash, dataset, self.args)]
        broadcast_object_list(key, from_process=0)  # one key for all ranks (ZeRO-3 shards the weights)
        folder = self.ref_cache_dir / f"{name.replace('/', '_')}-{key[0]}"
        if (folder / "dataset_info.json").is_file():
            cached = load_from_disk(str(folder), keep_in_memory=True)  # nothing written back into the cache
            if len(cached) == len(dataset):
                self.ref_cache_events[name] = "reused"
                return concatenate_datasets([dataset, cached], axis=1)
        # trl caches the computed log-probs next to the dataset's files, so give it files every rank can read
        # (an in-memory dataset would put them in a per-process temporary folder).
        inputs = folder.with_name(folder.name + ".inputs")
        if self.accelerator.is_main_process and not (inputs / "dataset_info.json").is_file():
            dataset.flatten_indices().save_to_disk(str(inputs))
        self.accelerator.wait_for_everyone()
        out = super()._precompute_ref_logps(load_from_disk(str(inputs)), name, batch_size)
        if self.accelerator.is_main_process:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            out.select_columns(REF_COLUMNS).flatten_indices().save_to_disk(str(tmp))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        self.accelerator.wait_for_everyone()
        self.ref_cache_events[name] = "computed"
        return out


def ref_cache_key(model_hash: str, tokenized: Dataset, args: DPOConfig) -> str:
    """What the reference log-probs depend on: the reference weights (trl's hash of them), the token ids of
    prompt/chosen/rejected, and the length limits. Not beta, the loss type or anything of the policy's."""
    ids = [c for c in tokenized.column_names if c.endswith("_ids")]
    payload = {"model": model_hash, "ids": fingerprint(tokenized.select_columns(ids)),
               **{f: getattr(args, f, None) for f in REF_INPUT_FIELDS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    loaded = ctx.load_data(c.data)
    data = as_preferences(loaded, ctx.root.run.seed)
    init_path = ctx.full_model_path(c.init)
    tokenizer = load_tokenizer(ctx.root.model, init_path)
    model = load_model(ctx.root.model, init_path)
    # Default reference = the init weights: trl reads them from the policy before training (precompute) or
    # keeps a frozen copy; an explicit other stage is loaded and passed.
    ref_model = None
    if c.ref_model is not None and c.ref_model != c.init:
        ref_model = load_model(ctx.root.model, ctx.full_model_path(c.ref_model))

    eval_sets = eval_subsets(data.eval, PAIR_COLUMNS)
    args = trainer_args(
        ctx, DPOConfig, has_eval=bool(eval_sets),
        beta=c.beta, loss_type=list(c.loss_type),
        loss_weights=list(c.loss_weights) if c.loss_weights is not None else None,
        precompute_ref_log_probs=c.precompute_ref_log_probs,
    )
    trainer = AyaDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=data.train.select_columns(PAIR_COLUMNS),
        eval_dataset=eval_sets or None,
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, "CAUSAL_LM"),
        ref_cache_dir=ctx.cache_dir / "ref_logps" if c.precompute_ref_log_probs else None,
    )
    dropped = count_dropped(trainer, data, eval_sets, ctx.name, c.max_length)
    attach_callbacks(ctx, trainer)
    train_resumable(trainer)
    if eval_sets and not (c.eval_steps and trainer.state.global_step % c.eval_steps == 0):
        trainer.evaluate()
    save_final(ctx, trainer, tokenizer)
    steps, ref_logps = trainer.state.global_step, dict(trainer.ref_cache_events)
    del trainer, model, ref_model

    policies = {c.init or "base": init_path, ctx.name: str(ctx.final_dir)}
    fidelity = held_out_fidelity(ctx, loaded, policies) if c.measure_fidelity else {}
    return StageResult(languages=language_table(ctx, data, fidelity), data_fingerprint=data.fingerprint,
                       summary={"steps": steps, "beta": c.beta, "loss_type": list(c.loss_type),
                                "ref_logps": ref_logps, "pairs_over_max_length": dropped})


def _steps(ctx: StageContext) -> int:
    records = read_metrics(ctx.stage_dir / "metrics.jsonl")
    return max((r["step"] for r in records), default=0)


def held_out_fidelity(ctx: StageContext, loaded, policies: Dict[str, str]) -> Dict[str, dict]:
    """Language fidelity of each policy on the held-out prompts (rank 0 generates; the others wait).
    Written to `<stage>/fidelity.json`; this stage's own rates also go to metrics.jsonl."""
    out: Dict[str, dict] = {}
    if ctx.state.is_main_process:
        prompts = as_prompts(loaded).eval
        results = measure_policies(policies, ctx.root.model, prompts, ctx.cfg.sampling)
        out = {label: result.to_dict() for label, result in results.items()}
        atomic_write_json(ctx.stage_dir / "fidelity.json", out)
        with (ctx.stage_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": _steps(ctx), **results[ctx.name].metrics("eval")}) + "\n")
    ctx.state.wait_for_everyone()
    return out


def language_table(ctx: StageContext, data, fidelity: Dict[str, dict]) -> dict:
    """Held-out reward accuracy and margin (first and last eval) and each measured policy's fidelity."""
    records = read_metrics(ctx.stage_dir / "metrics.jsonl")
    accuracy, margin = first_and_last(records, "reward_accuracy"), first_and_last(records, "reward_margin")
    table = {}
    for lang in sorted(set(data.train["language"])):
        row = {"first_reward_accuracy": accuracy.get(lang, (None, None))[0],
               "reward_accuracy": accuracy.get(lang, (None, None))[1],
               "reward_margin": margin.get(lang, (None, None))[1]}
        for label, result in fidelity.items():
            row[f"language_fidelity:{label}"] = result["rates"].get(lang)
        table[lang] = row
    return table
