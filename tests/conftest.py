"""Shared fixtures: offline hub, one cached tiny model, a quick demo run reused by several tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Shared across tests so the tiny model is built once per session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_model(cache_dir) -> str:
    """Folder of the built-in tiny model + tokenizer, built the way the pipeline builds it."""
    from aya_train.pipeline import base_model_path, process_state
    from aya_train.recipe import compose_recipe

    cfg = compose_recipe("demo", [f"run.cache_dir={cache_dir}"])
    return base_model_path(cfg, process_state())


def demo_stages() -> list[str]:
    """Stage names of recipes/demo.yaml, in order (from its `/stage@stages.NAME: KIND` defaults)."""
    import yaml

    defaults = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())["defaults"]
    return [key.split("@stages.")[1] for entry in defaults if isinstance(entry, dict)
            for key in entry if "@stages." in key]


def quick_overrides(out: Path, cache_dir: Path, steps: int = 24, keep: tuple = ("sft",)) -> list[str]:
    """The demo recipe shrunk to seconds: only the `keep` stages, few SFT steps, small eval."""
    dropped = [f"~stages.{name}" for name in demo_stages() if name not in keep]
    return [f"run.output_dir={out}", f"run.cache_dir={cache_dir}", f"stages.sft.max_steps={steps}",
            "stages.sft.eval_steps=12", "stages.sft.save_steps=12", "stages.sft.logging_steps=4",
            "data.sft.max_eval_rows_per_language=4", *dropped]


def chain_overrides(out: Path, cache_dir: Path, keep: tuple, steps: int = 4) -> list[str]:
    """The demo's preference chain shrunk to seconds: only the `keep` stages, `steps` each, tiny held-out sets."""
    shrink = {
        "reward": ["per_device_train_batch_size=8"],
        "dpo": ["per_device_train_batch_size=8", "sampling.max_new_tokens=8"],
        "rl": ["per_device_train_batch_size=4", "num_generations=2", "max_completion_length=8",
               "sampling.max_new_tokens=8", "logging_steps=1"],
    }
    args = [*quick_overrides(out, cache_dir, steps=steps, keep=keep), "stages.sft.eval_steps=null",
            "data.pref.max_eval_rows_per_language=2", "data.pref.mixture.budget=200"]
    if "rl" in keep and "dpo" not in keep:
        args.append("stages.rl.init=sft")  # the demo's rl continues from dpo
    for name in keep:
        if name != "sft":
            args += [f"stages.{name}.max_steps={steps}", f"stages.{name}.eval_steps=null",
                     *(f"stages.{name}.{o}" for o in shrink.get(name, []))]
    return args
