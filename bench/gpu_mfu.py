"""GPU throughput and MFU: SFT and DPO on a ~1B random-init Llama-style model, FlashAttention-2 + padding-free
vs SDPA + padding. For a CUDA machine; `--smoke` runs a tiny version of the same code on CPU (SDPA arms only).

    python bench/gpu_mfu.py                       # 1 GPU, bf16, ~1B model, 20 timed steps per arm
    python bench/gpu_mfu.py --steps 40 --peak-tflops 989
    OMP_NUM_THREADS=1 python bench/gpu_mfu.py --smoke   # CPU check of the script itself (figures meaningless)

Model: Llama architecture, hidden 2048, 16 layers, 32 heads (8 KV), MLP 8192, the demo tokenizer's vocabulary
(~1.0B parameters), random init, bf16 weights-and-autocast as the SFT stage uses on GPU. Data: the demo
corpus's conversations recombined into longer multi-turn rows (SFT) and into chosen/rejected pairs (DPO: the
real answer vs. another row's answer).

Arms (same model, data, batch size, max length, steps):
- sft fa2+padding_free: flash_attention_2, the SFT stage's `batching=padding_free` (what `auto` picks here).
- sft sdpa+padded:      sdpa, `batching=padded` (one conversation per row).
- dpo fa2+padding_free: flash_attention_2, DPOConfig(padding_free=True).
- dpo sdpa+padded:      sdpa, DPOConfig(padding_free=False).
FA2 arms are skipped (and say so) when flash_attn is not installed.

Figures: real tokens/s per GPU (the rows' own tokens, no padding; DPO counts prompt+chosen and prompt+rejected)
over the timed steps (the first `--warmup` steps are not timed), and MFU = 6 * N * tokens/s / peak FLOP/s, with N
the trainable parameters and the peak the GPU's dense bf16 figure (`--peak-tflops` overrides the table below).
For DPO the 6N counts the policy only, not the reference model's forward pass (a further 2N per token).
Last line: one JSON object with every arm's tokens_per_s and mfu.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import machine_line, print_table  # noqa: E402

# Dense bf16 tensor-core peak, TFLOP/s, by substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0}


def peak_flops(override: float | None) -> float | None:
    import torch

    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def build_model_dir(work: Path, smoke: bool) -> tuple[str, str]:
    """The demo tokenizer plus a random-init Llama (~1B, or tiny with --smoke) saved in a folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aya_train.pipeline import base_model_path, process_state
    from aya_train.recipe import compose_recipe

    cfg = compose_recipe("demo", [f"run.output_dir={work}", f"run.cache_dir={work / 'cache'}"])
    tiny = base_model_path(cfg, process_state())
    tok = AutoTokenizer.from_pretrained(tiny)
    sizes = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2) if smoke else dict(hidden_size=2048, intermediate_size=8192,
                                                           num_hidden_layers=16, num_attention_heads=32,
                                                           num_key_value_heads=8)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                         **sizes)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = work / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), tiny


def datasets_for(work: Path, rows: int):
    """(SFT conversations, DPO pairs) from the demo corpus, recombined into longer rows."""
    from datasets import Dataset

    from aya_train.pipeline import DataCache
    from aya_train.recipe import compose_recipe

    cfg = compose_recipe("demo", [f"run.output_dir={work}", f"run.cache_dir={work / 'cache'}"])
    demo = DataCache(cfg)("sft").train
    pairs = [[m for m in msgs if m["role"] != "system"][:2] for msgs in demo["messages"]]
    rng = random.Random(0)
    convs, prefs = [], []
    for i in range(rows):
        messages = [m for pair in rng.sample(pairs, k=rng.randint(2, 8)) for m in pair]
        convs.append(messages)
        other = rng.choice(pairs)[1]["content"]
        prefs.append({"prompt": messages[:-1], "chosen": [messages[-1]],
                      "rejected": [{"role": "assistant", "content": other}]})
    return Dataset.from_dict({"messages": convs}), Dataset.from_list(prefs)


class Meter:
    """Collator wrapper (real tokens per batch) + callback (time at each step end, CUDA synchronised)."""

    def __init__(self, inner):
        from transformers import TrainerCallback

        self.inner, self.tokens, self.ends = inner, [], []
        meter = self

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                meter.ends.append(time.perf_counter())

        self.callback = Clock()

    def __call__(self, examples):
        if "prompt_ids" in examples[0]:
            n = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
        else:
            n = sum(len(e["input_ids"]) for e in examples)
        self.tokens.append(n)
        return self.inner(examples)

    def rate(self, warmup: int) -> float:
        steps = len(self.ends)
        return sum(self.tokens[warmup + 1:steps]) / (self.ends[-1] - self.ends[warmup])


def run_arm(arm: str, model_dir: str, sft_data, dpo_data, a, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from aya_train.batching import sft_batching_args

    kind, attn = arm.split()[0], ("flash_attention_2" if "fa2" in arm else "sdpa")
    if attn == "flash_attention_2" and (importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available()):
        if not a.smoke:
            return {"skipped": "flash_attn is not installed" if torch.cuda.is_available() else "no CUDA device"}
        attn = "sdpa"  # smoke run: the padding-free code path, checked without the kernel
    gpu = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn,
                                                 dtype=torch.bfloat16 if gpu else torch.float32)
    common = dict(output_dir=str(work / arm.replace(" ", "_")), max_steps=a.warmup + a.steps,
                  per_device_train_batch_size=a.batch, learning_rate=1e-5, logging_steps=10_000, save_strategy="no",
                  report_to="none", bf16=gpu, use_cpu=not gpu, disable_tqdm=True, seed=0, max_length=a.max_length)
    if kind == "sft":
        mode = "padding_free" if "padding_free" in arm else "padded"
        args = SFTConfig(assistant_only_loss=True, **sft_batching_args(mode), **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft_data, processing_class=tok)
    else:
        args = DPOConfig(padding_free="padding_free" in arm, **common)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dpo_data, processing_class=tok)
    meter = Meter(trainer.data_collator)
    trainer.data_collator = meter
    trainer.add_callback(meter.callback)
    trainer.train()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens_per_s = meter.rate(a.warmup)
    peak = peak_flops(a.peak_tflops)
    result = {"attn": attn, "tokens_per_s": round(tokens_per_s), "params": n_params,
              "mfu": round(6 * n_params * tokens_per_s / peak, 4) if peak else None,
              "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if gpu else None}
    del trainer, model
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps per arm")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps per arm")
    p.add_argument("--batch", type=int, default=8, help="rows per step (SFT: packs or conversations; DPO: pairs)")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--rows", type=int, default=20_000, help="synthetic conversations / pairs")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of one GPU, TFLOP/s")
    p.add_argument("--arms", default="sft fa2+padding_free,sft sdpa+padded,dpo fa2+padding_free,dpo sdpa+padded")
    p.add_argument("--smoke", action="store_true", help="tiny model, few rows, CPU allowed: checks the script runs")
    a = p.parse_args()
    if a.smoke:
        a.steps, a.warmup, a.batch, a.max_length, a.rows = 3, 1, 4, 256, 200

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if not torch.cuda.is_available() and not a.smoke:
        raise SystemExit("bench/gpu_mfu.py needs a CUDA GPU (use --smoke to check the script on CPU)")
    work = Path(tempfile.mkdtemp(prefix="aya-bench-mfu-"))
    model_dir, _ = build_model_dir(work, a.smoke)
    sft_data, dpo_data = datasets_for(work, a.rows)
    results = {}
    for arm in a.arms.split(","):
        start = time.perf_counter()
        results[arm] = run_arm(arm, model_dir, sft_data, dpo_data, a, work)
        print(f"{arm}: {results[arm]} ({time.perf_counter() - start:.0f}s)", flush=True)

    peak = peak_flops(a.peak_tflops)
    print()
    print(machine_line())
    params = next((r["params"] for r in results.values() if "params" in r), None)
    print(f"model: Llama, {params / 1e9 if params else float('nan'):.2f}B parameters, random init; batch {a.batch}, "
          f"max_length {a.max_length}; {a.steps} timed steps after {a.warmup}; peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s bf16" + (" (SMOKE RUN: figures meaningless)" if a.smoke else ""))
    print_table(["arm", "kernel run", "real tokens/s per GPU", "MFU", "max memory GiB"],
                [[arm, r.get("attn", "-"), r.get("tokens_per_s", r.get("skipped")), r.get("mfu", "-"),
                  r.get("max_memory_gib", "-")]
                 for arm, r in results.items()])
    print(json.dumps({arm.replace(" ", "_"): {k: r.get(k) for k in ("tokens_per_s", "mfu", "skipped") if k in r}
                      for arm, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
