"""RL stage: online RL with trl's RLOOTrainer (k samples per prompt, leave-one-out baseline, reward minus
beta * KL to the init policy; "Back to Basics") or GRPOTrainer (`algorithm: grpo`).

Rewards: a named reward stage's model and/or reward functions (the built-in `language_fidelity`, or
`package.module:function`), summed with their weights. Logged per language from the rollouts:
`rl/reward_mean/<lang>` (the weighted reward before the KL term) and `rl/language_fidelity/<lang>`; trl logs
the KL (`train/kl`). After training the init and trained policies' language fidelity is measured on the
held-out prompts. Responses are sampled with vLLM when it is installed on a GPU, else transformers' generate.

Life cycle: prompts -> policy + reward model/functions -> RLOOConfig/GRPOConfig + trainer -> train (resuming)
-> save final/ -> held-out fidelity -> per-language table.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections import Counter, defaultdict
from typing import Any, Callable, List, Tuple

from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from aya_train.data.contrast import PROMPT_COLUMNS, as_prompts
from aya_train.metrics.fidelity import is_in_language, language_fidelity, response_text
from aya_train.metrics.per_language import read_metrics
from aya_train.modeling import load_model, load_tokenizer, lora_config, on_gpu
from aya_train.stages.common import StageContext, StageResult, attach_callbacks, save_final, train_resumable, trainer_args
from aya_train.stages.dpo import held_out_fidelity

BUILTIN_REWARDS = {"language_fidelity": language_fidelity}


class PerLanguageRewards:
    """Adds `rl/reward_mean/<lang>` and `rl/language_fidelity/<lang>` to trl's online-trainer metrics."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # all processes
        languages = gather_object([row["language"] for row in inputs])
        texts = gather_object([response_text(c) for c in completions])
        total = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1).tolist()
        rewards, hits = defaultdict(list), defaultdict(list)
        for lang, text, reward in zip(languages, texts, total):
            rewards[lang].append(reward)
            hits[lang].append(float(is_in_language(text, lang)))
        metrics = self._metrics["train" if self.model.training else "eval"]
        for lang in sorted(rewards):
            metrics[f"rl/reward_mean/{lang}"].append(sum(rewards[lang]) / len(rewards[lang]))
            metrics[f"rl/language_fidelity/{lang}"].append(sum(hits[lang]) / len(hits[lang]))
        return per_func


class AyaRLOOTrainer(PerLanguageRewards, RLOOTrainer):
    pass


class AyaGRPOTrainer(PerLanguageRewards, GRPOTrainer):
    pass


TRAINERS = {"rloo": (AyaRLOOTrainer, RLOOConfig), "grpo": (AyaGRPOTrainer, GRPOConfig)}


def reward_function(name: str) -> Callable:
    """The built-in reward of that name, or the function at `package.module:function`."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"reward_functions.{name}: cannot import it ({exc}); give `package.module:function` "
                         "importable from this environment") from None


def rewards(ctx: StageContext) -> Tuple[List[Any], List[Any], List[float]]:
    """(reward funcs, their processing classes, weights): the reward model first, then the functions."""
    c = ctx.cfg
    funcs, classes, weights = [], [], []
    if c.reward_model:
        path = ctx.full_model_path(c.reward_model)
        rm_tokenizer = load_tokenizer(ctx.root.model, path)
        funcs.append(load_model(ctx.root.model, path, task="seq_cls", num_labels=1,
                                pad_token_id=rm_tokenizer.pad_token_id))
        classes.append(rm_tokenizer)
        weights.append(float(c.reward_model_weight))
    for name, weight in c.reward_functions.items():
        funcs.append(reward_function(name))
        classes.append(None)
        weights.append(float(weight))
    return funcs, classes, weights


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    loaded = ctx.load_data(c.data)
    data = as_prompts(loaded)
    init_path = ctx.full_model_path(c.init)
    tokenizer = load_tokenizer(ctx.root.model, init_path)
    model = load_model(ctx.root.model, init_path)
    funcs, classes, weights = rewards(ctx)
    trainer_cls, config_cls = TRAINERS[c.algorithm]
    vllm = importlib.util.find_spec("vllm") is not None and on_gpu()
    args = trainer_args(
        ctx, config_cls, has_eval=False,
        num_generations=c.num_generations, beta=c.beta, max_completion_length=c.max_completion_length,
        reward_weights=weights, use_vllm=vllm, **({"vllm_mode": "colocate"} if vllm else {}),
    )
    trainer = trainer_cls(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=data.train.select_columns(list(PROMPT_COLUMNS)),
        processing_class=tokenizer,
        reward_processing_classes=classes,
        peft_config=lora_config(c.lora, "CAUSAL_LM"),
    )
    attach_callbacks(ctx, trainer)
    train_resumable(trainer)
    save_final(ctx, trainer, tokenizer)
    steps = trainer.state.global_step
    del trainer, model, funcs

    fidelity = held_out_fidelity(ctx, loaded, {c.init or "base": init_path, ctx.name: str(ctx.final_dir)}) \
        if c.measure_fidelity else {}
    return StageResult(languages=language_table(ctx, data, fidelity), data_fingerprint=data.fingerprint,
                       summary={"steps": steps, "algorithm": c.algorithm, "beta": c.beta,
                                "num_generations": c.num_generations})


def language_table(ctx: StageContext, data, fidelity: dict) -> dict:
    """Prompts per language, mean rollout reward and fidelity (first and last log), held-out fidelity per policy."""
    records = read_metrics(ctx.stage_dir / "metrics.jsonl")
    prompts, table = Counter(data.train["language"]), {}
    for lang in sorted(prompts):
        rewards_ = [r[f"rl/reward_mean/{lang}"] for r in records if f"rl/reward_mean/{lang}" in r]
        row = {"prompts": prompts[lang],
               "first_reward_mean": rewards_[0] if rewards_ else None,
               "last_reward_mean": rewards_[-1] if rewards_ else None}
        for label, result in fidelity.items():
            row[f"language_fidelity:{label}"] = result["rates"].get(lang)
        table[lang] = row
    return table
