"""Padding waste and training speed: aya_train's default SFT batching vs plain trl, padded and packed.

    OMP_NUM_THREADS=1 python bench/packing.py                 # demo data, tiny Llama, batch 16, max_length 256
    OMP_NUM_THREADS=1 python bench/packing.py --steps 30 --rounds 3

Every arm trains the same tiny random-init model on the demo mixture (chatterbot corpus, 27 languages) with
assistant-only loss for the same number of optimiser steps; the arms run interleaved, `--rounds` times. A batch's
real tokens are the conversations' tokens in it, its slots are the positions of the tensor the model sees
(padding included); real tokens/s is real tokens over wall time, from the end of the first optimiser step (set-up,
warm-up) to the end of the last.

Arms: trl_padded (SFTTrainer, packing=False), trl_packed (SFTTrainer, packing=True: best-fit decreasing packs,
flattened padding-free batch), aya_default (the SFT stage's trainer with `batching=auto`), and two candidates
auto could have picked on this machine: aya_padded_grouped (batching=padded + length-grouped sampling) and
aya_padded. Last line: {"real_token_fraction", "tokens_per_s_ratio"} for aya_default, the ratio over the best
of the two plain-trl arms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import machine_line, print_table  # noqa: E402


class CountingCollator:
    """Wraps a collator: real tokens (the examples' own tokens) and slots (the collated tensor's positions) per batch."""

    def __init__(self, inner):
        self.inner, self.real, self.slots = inner, [], []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.real.append(sum(len(e["input_ids"]) for e in examples))
        self.slots.append(batch["input_ids"].numel())
        return batch


def step_clock():
    """A callback noting when each optimiser step ends; the first step (warm-up, optimiser set-up) is not timed."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        ends: list = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    clock.ends = []
    return clock


def common_args(out: Path, a) -> dict:
    return dict(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch, max_length=a.max_length,
                learning_rate=3e-3, assistant_only_loss=True, report_to="none", use_cpu=True, bf16=False,
                save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=42, dataloader_num_workers=0)


def build(arm: str, a, cfg, ctx_factory, data, model_path: str, out: Path):
    from trl import SFTConfig, SFTTrainer

    from aya_train.modeling import load_model, load_tokenizer
    from aya_train.stages.sft import build_trainer

    tok = load_tokenizer(cfg.model, model_path)
    model = load_model(cfg.model, model_path)
    train = data.train.select_columns(["messages"])
    if arm.startswith("trl_"):
        args = SFTConfig(packing=arm == "trl_packed", **common_args(out, a))
        return SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    overrides = {"aya_default": ["stages.sft.batching=auto"],
                 "aya_padded": ["stages.sft.batching=padded"],
                 "aya_padded_grouped": ["stages.sft.batching=padded",
                                        "+stages.sft.args.train_sampling_strategy=group_by_length"]}[arm]
    ctx = ctx_factory(overrides, out)
    empty_eval = type(data)(train=data.train, eval=data.eval.select([]), summary=data.summary)
    trainer = build_trainer(ctx, empty_eval, tok, model)
    trainer.args.disable_tqdm = True
    return trainer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--arms", default="trl_padded,trl_packed,aya_default,aya_padded_grouped,aya_padded")
    a = p.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from aya_train.artifacts import RunDir
    from aya_train.pipeline import DataCache, base_model_path, process_state
    from aya_train.recipe import compose_recipe
    from aya_train.stages.common import StageContext

    hf_logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="aya-bench-packing-"))
    base = [f"run.output_dir={work}", f"run.cache_dir={work / 'cache'}", "run.name=bench",
            f"stages.sft.max_steps={a.steps}", f"stages.sft.per_device_train_batch_size={a.batch}",
            f"stages.sft.max_length={a.max_length}", "stages.sft.learning_rate=3e-3", "stages.sft.logging_steps=10000",
            "stages.sft.save_steps=100000", "stages.sft.warmup_steps=0"]
    cfg = compose_recipe("demo", base)
    state = process_state()
    model_path = base_model_path(cfg, state)
    data = DataCache(cfg)("sft")

    def ctx_factory(overrides, out):
        c = compose_recipe("demo", base + overrides)
        return StageContext(name="sft", cfg=c.stages.sft, root=c, run_dir=RunDir(out), base_model=model_path,
                            load_data=DataCache(c), state=state)

    arms = a.arms.split(",")
    totals = {arm: {"real": 0, "slots": 0, "seconds": 0.0} for arm in arms}
    batching = {}
    for r in range(a.rounds):
        for arm in arms:
            torch.manual_seed(0)
            trainer = build(arm, a, cfg, ctx_factory, data, model_path, work / f"{arm}-{r}")
            batching[arm] = getattr(trainer, "batching", "packed (flattened)" if arm == "trl_packed" else "padded")
            counter, clock = CountingCollator(trainer.data_collator), step_clock()
            trainer.data_collator = counter
            trainer.add_callback(clock)
            trainer.train()
            # steps 2..N: batch i is step i (no accumulation, no dataloader workers)
            real, slots = sum(counter.real[1:a.steps]), sum(counter.slots[1:a.steps])
            elapsed = clock.ends[-1] - clock.ends[0]
            t = totals[arm]
            t["real"] += real
            t["slots"] += slots
            t["seconds"] += elapsed
            print(f"round {r + 1} {arm:<20} {real / elapsed:10.0f} real tok/s  "
                  f"fraction {real / slots:.3f}  {elapsed:6.1f}s", flush=True)

    rows = []
    for arm in arms:
        t = totals[arm]
        t["fraction"] = t["real"] / t["slots"]
        t["tokens_per_s"] = t["real"] / t["seconds"]
        rows.append([arm, batching[arm], f"{t['fraction']:.3f}", f"{t['tokens_per_s']:.0f}", f"{t['seconds']:.1f}"])
    print()
    print(machine_line())
    print(f"demo mixture, tiny Llama, batch {a.batch}, max_length {a.max_length}, {a.steps} steps x {a.rounds} rounds")
    print_table(["arm", "batching", "real-token fraction", "real tokens/s", "train s"], rows)
    best_trl = max((totals[arm]["tokens_per_s"] for arm in arms if arm.startswith("trl_")), default=float("nan"))
    result = {}
    if "aya_default" in totals:
        result = {"real_token_fraction": round(totals["aya_default"]["fraction"], 4),
                  "tokens_per_s_ratio": round(totals["aya_default"]["tokens_per_s"] / best_trl, 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
