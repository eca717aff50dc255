"""Stage registry: kind -> (trl config class, runner). One file per kind, each glue over one trl trainer."""

from __future__ import annotations

import importlib
from typing import Callable

# kind -> (module with `run(ctx) -> StageResult`, trl config class name used for `args` checks)
_REGISTRY = {
    "sft": ("aya_train.stages.sft", "SFTConfig"),
    "reward": ("aya_train.stages.reward", "RewardConfig"),
    "dpo": ("aya_train.stages.dpo", "DPOConfig"),
    # `args` are checked against RLOOConfig; stages.NAME.algorithm=grpo trains with GRPOConfig.
    "rl": ("aya_train.stages.rl", "RLOOConfig"),
}


def trainer_config_class(kind: str) -> type:
    """The trl config dataclass whose fields a stage's `args` may set."""
    import trl

    return getattr(trl, _REGISTRY[kind][1])


def runner(kind: str) -> Callable:
    """The stage's `run(ctx)`; imported on demand so validation never pays for trainer imports."""
    return importlib.import_module(_REGISTRY[kind][0]).run
