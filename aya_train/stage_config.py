"""Typed schema of every stage kind: one dataclass per kind, each field documented where declared.

A recipe creates a stage with the defaults entry `/stage@stages.NAME: KIND`, which pulls in the
dataclass registered here under that kind (see aya_train.config.register_configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from aya_train.config import LoraConfig

# Field metadata marking a value that names an earlier stage; the pipeline checks and orders by it.
STAGE_REF = {"stage_ref": True}
# The same, for a reference the stage cannot do without (validation fails while it is null).
REQUIRED_STAGE_REF = {"stage_ref": True, "required": True}

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
    # Batch layout, chosen for the attention kernel (aya_train/batching.py): auto (padding_free with FlashAttention,
    # else packed_rows), padding_free (conversations packed by best-fit decreasing, the batch flattened into one row
    # for a varlen kernel), packed_rows (the same packs as separate rows, block-diagonal attention within each),
    # padded (one conversation per row). Replaces trl's packing/padding_free/eval_packing, which `args` may not set.
    batching: str = "auto"

    @staticmethod
    def check(node: Any) -> None:
        """Cross-field checks (run by recipe.validate); ValueError('<key>: <what to do>')."""
        from aya_train.batching import check_stage

        check_stage(node)


MERGE_METHODS = ("linear", "slerp", "ties", "dare_linear", "dare_ties")


@dataclass
class MergeStageConfig:
    """Merge earlier stages' models into one (no trainer): linear, SLERP, TIES, DARE with peft's merge maths."""

    kind: str = "merge"
    # Earlier stages whose final models are merged (full weights, or LoRA adapters: each adapter is merged into
    # its own base first). All must share one architecture; the first one's config and tokenizer are kept.
    models: List[str] = field(default_factory=list, metadata=STAGE_REF)
    # linear: weighted average of the weights. slerp: spherical interpolation of two models at
    # t = weights[1] / sum(weights). ties / dare_linear / dare_ties: peft's merges of the task vectors
    # (model - base): trimmed by magnitude (ties) or dropped at random and rescaled (dare), signs elected (ties).
    method: str = "linear"
    # Relative weight of each model, one per entry of `models`; only ratios matter; null = equal weights.
    weights: Optional[List[float]] = None
    # ties / dare_*: share of each task vector's entries kept (0 < density <= 1; 1 keeps all of them).
    density: float = 0.5
    # ties / dare_*: the model task vectors are taken against: an earlier stage (usually the shared init,
    # e.g. sft), or null for model.name_or_path. Unused by linear and slerp.
    base: Optional[str] = field(default=None, metadata=STAGE_REF)
    # ties / dare_ties: elect each entry's sign by summed values (`total`) or by a vote of signs (`frequency`).
    majority_sign_method: str = "total"

    @staticmethod
    def check(node: Any) -> None:
        """Cross-field checks (run by recipe.validate); ValueError('<key>: <what to do>')."""
        models = list(node.models)
        if len(models) < 2:
            raise ValueError(f"models: merging needs at least two stages, got {models}.")
        if len(set(models)) != len(models):
            raise ValueError(f"models: {models} names a stage twice; give each once and use `weights` to favour one.")
        if node.method not in MERGE_METHODS:
            raise ValueError(f"method: `{node.method}` is not one of {', '.join(MERGE_METHODS)}.")
        if node.method == "slerp" and len(models) != 2:
            raise ValueError(f"models: slerp interpolates exactly two models, got {len(models)}; "
                             "use linear or ties for more.")
        if node.weights is not None:
            weights = list(node.weights)
            if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights: {weights} must be one non-negative number per model ({len(models)}) "
                                 "with a positive sum, or null for equal weights.")
        if not 0 < node.density <= 1:
            raise ValueError(f"density: {node.density} must be in (0, 1] (the share of task-vector entries kept).")
        if node.majority_sign_method not in ("total", "frequency"):
            raise ValueError(f"majority_sign_method: `{node.majority_sign_method}` must be `total` or `frequency`.")


@dataclass
class SamplingConfig:
    """How responses are sampled for measurement (held-out language fidelity, evaluation). Recorded next to
    every figure it produced, so two policies are only compared under the same settings."""

    # Longest response, in new tokens.
    max_new_tokens: int = 48
    # Sample (true) or decode greedily (false).
    do_sample: bool = True
    # Softmax temperature when sampling.
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1.0 = off).
    top_p: float = 1.0
    # Keep only the k most likely tokens (0 = off).
    top_k: int = 0
    # Seed of the sampling draws: the same prompts, settings and seed give every policy the same random numbers.
    seed: int = 1234
    # Prompts per generate call (left-padded together).
    batch_size: int = 32
    # Generation engine: auto (vLLM when installed and a GPU is present, else transformers), transformers, vllm.
    backend: str = "auto"


@dataclass
class RewardStageConfig(StageConfig):
    """Reward model over trl's RewardTrainer: a sequence classifier scoring (prompt, reply). Trained on
    preference pairs; a conversation data set is turned into in-language vs other-language pairs."""

    kind: str = "reward"


@dataclass
class DPOStageConfig(StageConfig):
    """Offline preference optimisation over trl's DPOTrainer (the DPO family: any of trl's loss types)."""

    kind: str = "dpo"
    # Reference model: an earlier stage (a LoRA adapter is merged into its base first), or null for the
    # model the policy starts from (`init`).
    ref_model: Optional[str] = field(default=None, metadata=STAGE_REF)
    # Strength of the pull towards the reference (DPO's beta; IPO's regularisation).
    beta: float = 0.1
    # trl loss types, e.g. [sigmoid], [ipo], [sigmoid, sft] (RPO-style); several are summed with loss_weights.
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])
    # One weight per loss_type entry; null weighs each 1.0.
    loss_weights: Optional[List[float]] = None
    # Compute the reference log-probs once, before training, and cache them in `<stage>/cache/`: the reference
    # model is then not kept in memory, and a rerun (resume, or another beta) reuses them.
    precompute_ref_log_probs: bool = True
    # Measure the language fidelity of the init and the trained policy on the held-out prompts.
    measure_fidelity: bool = True
    # How held-out responses are sampled for that measurement.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class RLStageConfig(StageConfig):
    """Online RL over trl's RLOOTrainer (k samples per prompt, leave-one-out baseline, reward - beta * KL to
    the init policy) or GRPOTrainer. The data set gives the prompts (and their `language`)."""

    kind: str = "rl"
    # Online trainer: rloo or grpo.
    algorithm: str = "rloo"
    # A reward stage whose model scores each (prompt, response); null for reward functions only.
    reward_model: Optional[str] = field(default=None, metadata={**STAGE_REF, "kinds": ("reward",)})
    # Weight of the reward model's score in the summed reward.
    reward_model_weight: float = 1.0
    # Reward functions and their weights: the built-in `language_fidelity` (1 when the response is in the
    # prompt's language), or `package.module:function` with trl's reward-function signature.
    reward_functions: Dict[str, float] = field(default_factory=dict)
    # Responses sampled per prompt (RLOO's k; the leave-one-out baseline needs at least 2).
    num_generations: int = 4
    # KL coefficient towards the init policy.
    beta: float = 0.05
    # Longest sampled response during training, in tokens.
    max_completion_length: int = 48
    # Measure the language fidelity of the init and the trained policy on the held-out prompts.
    measure_fidelity: bool = True
    # How held-out responses are sampled for that measurement.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @staticmethod
    def check(node: Any) -> None:
        """Cross-field checks (run by recipe.validate); ValueError('<key>: <what to do>')."""
        if node.algorithm not in ("rloo", "grpo"):
            raise ValueError(f"algorithm: `{node.algorithm}` is not an online trainer; use rloo or grpo")
        if node.reward_model is None and not node.reward_functions:
            raise ValueError("reward_model: the stage has no reward; name a reward stage and/or set "
                             "reward_functions, e.g. {language_fidelity: 1.0}")
        if node.num_generations < 2:
            raise ValueError(f"num_generations: {node.num_generations} gives no leave-one-out baseline; use 2 or more")
        for name in node.reward_functions:
            if name != "language_fidelity" and ":" not in name:
                raise ValueError(f"reward_functions.{name}: use the built-in `language_fidelity` or an import "
                                 "path `package.module:function`")


@dataclass
class JudgeEndpointConfig:
    """An LLM judge behind an OpenAI-compatible endpoint (e.g. `vllm serve`); off unless base_url is set."""

    # Base URL of the API, e.g. http://localhost:8000/v1; null = no endpoint judge.
    base_url: Optional[str] = None
    # Model name the endpoint serves.
    model: Optional[str] = None
    # Environment variable holding the API key (the key itself never goes into a config, log or card); null = none.
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    # Ask twice with the two responses in both orders and average the verdicts, cancelling position bias.
    swap_positions: bool = True
    # Seconds to wait for each verdict.
    timeout_s: float = 60.0


@dataclass
class EvaluateStageConfig:
    """Generate on held-out prompts per language with several models; win-rates against a baseline with
    bootstrap confidence intervals, judged by a reward-model stage (or an endpoint); language fidelity."""

    kind: str = "evaluate"
    # Earlier stages whose models are evaluated (full weights or LoRA adapters). Naming the baseline here too
    # adds a sanity row: a model against itself with the same sampling seed ties everywhere (0.5).
    models: List[str] = field(default_factory=list, metadata=STAGE_REF)
    # The stage every model is compared against (e.g. sft).
    baseline: Optional[str] = field(default=None, metadata=STAGE_REF)
    # A reward stage whose model judges each pair (higher score wins, equal scores tie); null when
    # judge_endpoint is used instead.
    judge: Optional[str] = field(default=None, metadata={**STAGE_REF, "kinds": ("reward",)})
    # An LLM judge behind an OpenAI-compatible endpoint, used instead of `judge` when its base_url is set.
    judge_endpoint: JudgeEndpointConfig = field(default_factory=JudgeEndpointConfig)
    # Data set (under `data.`) whose held-out split gives the prompts: every turn before each held-out
    # conversation's last reply, or the `prompt` of held-out preference pairs. Never trained on.
    data: Optional[str] = None
    # Use at most this many held-out prompts per language (the first ones of the split); null = all.
    max_prompts_per_language: Optional[int] = None
    # How every model's responses are sampled: the same settings and seed for all, recorded with the results.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Bootstrap resamples of the prompts (within each language) for the confidence intervals.
    bootstrap_samples: int = 1000
    # Confidence level of the intervals.
    confidence: float = 0.95
    # Pairs the reward model scores per forward pass.
    judge_batch_size: int = 16
    # Longest prompt + response the reward model reads, in tokens (longer ones are truncated).
    judge_max_length: int = 1024

    @staticmethod
    def check(node: Any) -> None:
        """Cross-field checks (run by recipe.validate); ValueError('<key>: <what to do>')."""
        if not node.models:
            raise ValueError("models: name at least one earlier stage to evaluate.")
        if node.baseline is None:
            raise ValueError("baseline: name the earlier stage every model is compared against (e.g. sft).")
        if node.data is None:
            raise ValueError("data: name the data set whose held-out split gives the prompts.")
        endpoint = node.judge_endpoint.base_url is not None
        if (node.judge is None) == (not endpoint):
            raise ValueError("judge: name a reward stage as the judge, or set judge_endpoint.base_url (and .model) "
                             "to use an LLM endpoint; exactly one of them.")
        if endpoint and not node.judge_endpoint.model:
            raise ValueError("judge_endpoint.model: name the model the endpoint serves.")
        if node.bootstrap_samples < 100:
            raise ValueError(f"bootstrap_samples: {node.bootstrap_samples} is too few for a 95% interval; use 1000.")
        if not 0 < node.confidence < 1:
            raise ValueError(f"confidence: {node.confidence} must be between 0 and 1 (e.g. 0.95).")


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

    @staticmethod
    def check(node: Any) -> None:
        """Cross-field checks (run by recipe.validate); ValueError('<key>: <what to do>')."""
        from aya_train.stages.export import check_config

        check_config(node)


# Stage kind -> its schema; the registry in aya_train.stages maps the same kinds to their runners.
STAGE_SCHEMAS: Dict[str, type] = {
    "sft": SFTStageConfig,
    "reward": RewardStageConfig,
    "dpo": DPOStageConfig,
    "rl": RLStageConfig,
    "merge": MergeStageConfig,
    "evaluate": EvaluateStageConfig,
    "export": ExportStageConfig,
}
