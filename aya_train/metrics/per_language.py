"""Per-language (and per-task) metrics on top of the Trainer's own evaluation loop.

The eval split is handed to the Trainer as a dict of subsets, one per language and per task plus `all`;
transformers evaluates each and prefixes its metrics with the subset's name. The mixin below renames them
to `eval_<metric>/<group>`, which the Trainer's loggers (tensorboard, wandb) show as
`eval/<metric>/<group>` and metrics.jsonl stores under that canonical name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from datasets import Dataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

ALL = "all"
TASK_PREFIX = "task:"
# Bookkeeping the Trainer reports for every evaluation; kept for `all`, dropped per group as noise.
_PER_GROUP_NOISE = ("runtime", "samples_per_second", "steps_per_second", "num_tokens")


def eval_subsets(eval_ds: Dataset, keep_columns: List[str]) -> Dict[str, Dataset]:
    """{'all': every row, '<lang>': rows of one language, 'task:<task>': rows of one task}."""
    if len(eval_ds) == 0:
        return {}
    subsets = {ALL: eval_ds.select_columns(keep_columns)}
    for column, prefix in (("language", ""), ("task", TASK_PREFIX)):
        values = eval_ds[column]
        for value in sorted(set(values)):
            idx = [i for i, v in enumerate(values) if v == value]
            subsets[f"{prefix}{value}"] = eval_ds.select(idx).select_columns(keep_columns)
    return subsets


class PerLanguageTrainerMixin(Trainer):
    """Combine after a trl trainer (`class T(SFTTrainer, PerLanguageTrainerMixin)`) so that it sees the
    metrics trl adds in its own `log` and can attribute them to the subset being evaluated."""

    _eval_group: Optional[str] = None
    # trl metric name -> the documented name (e.g. RewardTrainer's `accuracy` -> `reward_accuracy`), applied
    # to training logs and every eval group alike.
    metric_renames: Dict[str, str] = {}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if isinstance(eval_dataset if eval_dataset is not None else self.eval_dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        previous, self._eval_group = self._eval_group, metric_key_prefix.removeprefix("eval").lstrip("_") or ALL
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._eval_group = previous

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        group = self._eval_group
        if group is not None:
            logs = {_rename(key, group): value for key, value in logs.items()
                    if group == ALL or not key.endswith(_PER_GROUP_NOISE)}
        if self.metric_renames:
            logs = {_apply_renames(key, self.metric_renames): value for key, value in logs.items()}
        super().log(logs, start_time)


def _rename(key: str, group: str) -> str:
    """eval_sw_loss -> eval_loss/sw; trl's eval_mean_token_accuracy -> eval_mean_token_accuracy/sw."""
    if not key.startswith("eval_"):
        return key
    metric = key.removeprefix(f"eval_{group}_") if key.startswith(f"eval_{group}_") else key.removeprefix("eval_")
    return f"eval_{metric}" if group == ALL else f"eval_{metric}/{group}"


def _apply_renames(key: str, renames: Dict[str, str]) -> str:
    """eval_accuracy/sw -> eval_reward_accuracy/sw and accuracy -> reward_accuracy for {accuracy: reward_accuracy}."""
    prefix = "eval_" if key.startswith("eval_") else ""
    body = key[len(prefix):]
    for old, new in renames.items():
        if body == old or body.startswith(old + "/"):
            return prefix + new + body[len(old):]
    return key


def canonical(key: str) -> str:
    """Trainer log key -> metric name as documented: eval_loss/sw -> eval/loss/sw, loss -> train/loss."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    if key in ("epoch", "step") or "/" in key:
        return key
    return "train/" + key


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bar, printing training and overall eval logs but not every language's."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and any("/" in key for key in logs):
            return
        super().on_log(args, state, control, logs=logs, **kwargs)


class MetricsFileCallback(TrainerCallback):
    """Append every log record, under canonical names, to `<stage>/metrics.jsonl` (rank 0 only)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, **{canonical(k): v for k, v in logs.items()}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_and_last(records: List[dict], metric: str) -> Dict[str, tuple]:
    """{group: (first, last)} for `eval/<metric>/<group>` across the logged evaluations."""
    prefix = f"eval/{metric}/"
    out: Dict[str, tuple] = {}
    for rec in records:
        for key, value in rec.items():
            if key.startswith(prefix):
                group = key.removeprefix(prefix)
                out[group] = (out.get(group, (value,))[0], value)
    return out
