"""`aya-train recipe=NAME key=value ...`: compose the recipe with Hydra, validate it, run the pipeline."""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import List, Optional

from aya_train.errors import ConfigError

USAGE = """usage: aya-train recipe=NAME [key=value ...]

  recipe=NAME            a built-in recipe, one in $AYA_TRAIN_RECIPES, or recipe=path/to/file.yaml
  key=value              override any config field (Hydra syntax), e.g. stages.sft.learning_rate=1e-4
  run.dry_run=true       print the stage graph and data summary, train nothing
  run.only=[sft]         run some stages; finished ones they depend on are reused
  run.from_stage=NAME    run NAME and every stage after it; earlier finished stages are reused
  run.force=true         rerun stages whose inputs changed, discarding their earlier outputs
"""


# Allocations between young-generation garbage collections in the CLI (CPython's default: 700); see main().
GC_THRESHOLD = 50_000

def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        from aya_train.recipe import available_recipes

        print(USAGE + "\nrecipes: " + ", ".join(available_recipes()))
        return 0
    logging.basicConfig(level=os.environ.get("AYA_TRAIN_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    # Start-up (torch, transformers, trl, the data) builds ~500k long-lived objects; at CPython's default
    # thresholds the cyclic garbage collector runs ~1,900 times over them while they pile up, ~1.5 s of a short
    # run (bench/overhead.py). Collect less often; training also freezes them (stages.common.train_resumable).
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    from aya_train.recipe import compose_recipe, split_recipe_arg

    try:
        recipe, overrides = split_recipe_arg(argv)
        cfg = compose_recipe(recipe, overrides)
    except ConfigError as exc:
        print(f"aya-train: config error: {exc}", file=sys.stderr)
        return 2
    from aya_train import pipeline
    from aya_train.data.schema import DataError

    try:
        pipeline.run(cfg)
    except ConfigError as exc:  # the stage plan cannot run (changed inputs, a needed stage left out)
        print(f"aya-train: config error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"aya-train: data error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
