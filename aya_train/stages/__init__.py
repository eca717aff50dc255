"""Stage registry: kind -> (trl config class, runner). One file per kind, each glue over one trl trainer."""

from __future__ import annotations

import importlib
from typing import Callable, Optional

# kind -> (module with `run(ctx) -> StageResult`, trl config class name used for `args` checks (per
# `algorithm` for rl), or None for a stage that trains nothing and has no `args`)
_REGISTRY = {
    "sft": ("aya_train.stages.sft", "SFTConfig"),
    "reward": ("aya_train.stages.reward", "RewardConfig"),
    "dpo": ("aya_train.stages.dpo", "DPOConfig"),
    "rl": ("aya_train.stages.rl", {"rloo": "RLOOConfig", "grpo": "GRPOConfig"}),
    # Stages without a trl trainer: no `args` passthrough.
    "merge": ("aya_train.stages.merge", None),
    "evaluate": ("aya_train.stages.evaluate", None),
    "export": ("aya_train.stages.export", None),
}


def trainer_config_class(node) -> Optional[type]:
    """The trl config dataclass whose fields stage `node`'s `args` may set; None for a stage without a trainer."""
    import trl

    name = _REGISTRY[node.kind][1]
    if isinstance(name, dict):  # the trainer follows the stage's algorithm
        name = name[node.algorithm]
    return getattr(trl, name) if name else None


def runner(kind: str) -> Callable:
    """The stage's `run(ctx)`; imported on demand so validation never pays for trainer imports."""
    return importlib.import_module(_REGISTRY[kind][0]).run
