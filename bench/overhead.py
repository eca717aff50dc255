"""What aya_train adds on top of trl: the same tiny SFT job through `aya-train` and through a plain trl script.

    OMP_NUM_THREADS=1 python bench/overhead.py                # 30 steps, batch 16, max_length 256, 3 rounds
    OMP_NUM_THREADS=1 python bench/overhead.py --steps 60 --rounds 5

Both arms are fresh processes, timed from start to exit (imports, start-up, data loading and tokenising, training,
saving the model): `python -m aya_train recipe=<bench recipe>` and `python bench/plain_trl_sft.py`. Same tiny model
folder, same rows (the demo's training set written to one jsonl file), same steps, batch, max length, learning
rate and seed, and the same batch layout (one conversation per row, padded: trl's default, aya_train's
`batching=padded`), so the difference is the framework's, not the batching's. Both arms cache: aya_train its
tokenised data under `run.cache_dir`, plain trl its `datasets` map results under `HF_DATASETS_CACHE`. Each round
runs both with empty caches (cold: `ratio`), then again with the caches the cold runs left (a rerun under another
run name / output folder: `warm_ratio`). The arms alternate, `--rounds` times.
Training speed on a shared machine varies more between runs than the frameworks differ, so each arm's wall minus
its training time (start-up, data, saving: what the framework adds) is printed too, as `setup_s`.
Last line: {"ratio", "warm_ratio": aya wall / trl wall (totals over rounds), "aya_tokens_per_s", "trl_tokens_per_s",
"setup_s": {arm: mean wall - training s}}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import machine_line, print_table  # noqa: E402

RECIPE = """\
# bench/overhead.py: the plain-trl job, through aya-train
defaults:
  - /aya_train
  - /stage@stages.sft: sft
  - _self_
run:
  name: overhead
  output_dir: {out}
  cache_dir: {cache}
model:
  name_or_path: {model}
  attn_implementation: sdpa
data:
  sft:
    sources: [{{path: {data}, format: messages}}]
    eval_fraction: 0.0
stages:
  sft:
    data: sft
    max_steps: {steps}
    learning_rate: 3.0e-3
    per_device_train_batch_size: {batch}
    max_length: {max_length}
    logging_steps: 10
    save_steps: 100000
    batching: padded
"""


def export_demo(work: Path) -> tuple[str, Path]:
    """Build the tiny model and write the demo's training rows (messages + language) to one jsonl file."""
    from aya_train.pipeline import DataCache, base_model_path, process_state
    from aya_train.recipe import compose_recipe

    cfg = compose_recipe("demo", [f"run.output_dir={work / 'export'}", f"run.cache_dir={work / 'model'}"])
    model = base_model_path(cfg, process_state())
    data = DataCache(cfg)("sft").train
    path = work / "train.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for messages, language in zip(data["messages"], data["language"]):
            f.write(json.dumps({"messages": messages, "language": language}, ensure_ascii=False) + "\n")
    return model, path


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def aya_tokens(run_dir: Path) -> tuple[float, float]:
    """(train runtime s, tokens) from the aya run's metrics.jsonl."""
    runtime = tokens = 0.0
    for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        runtime = rec.get("train/train_runtime", runtime)
        tokens = max(tokens, rec.get("train/num_tokens", 0))
    return runtime, tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aya-bench-overhead-"))
    model, data = export_demo(work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    walls = {"aya": [], "trl": [], "aya_warm": [], "trl_warm": []}
    speed = {name: [0.0, 0.0] for name in walls}  # runtime, tokens
    for r in range(a.rounds):
        recipe = work / f"overhead-{r}.yaml"
        recipe.write_text(RECIPE.format(out=work / f"aya-{r}", cache=work / f"aya-cache-{r}", model=model, data=data,
                                        steps=a.steps, batch=a.batch, max_length=a.max_length), encoding="utf-8")
        warm = work / f"overhead-{r}-warm.yaml"
        warm.write_text(RECIPE.format(out=work / f"aya-warm-{r}", cache=work / f"aya-cache-{r}", model=model,
                                      data=data, steps=a.steps, batch=a.batch, max_length=a.max_length),
                        encoding="utf-8")
        def trl(out: str) -> list:
            return [sys.executable, str(ROOT / "bench" / "plain_trl_sft.py"), str(data), model, str(work / out),
                    "--steps", str(a.steps), "--batch", str(a.batch), "--max-length", str(a.max_length)]

        cold = [("aya", [sys.executable, "-m", "aya_train", f"recipe={recipe}"]), ("trl", trl(f"trl-{r}"))]
        warm_runs = [("aya_warm", [sys.executable, "-m", "aya_train", f"recipe={warm}"]), ("trl_warm", trl(f"trl-warm-{r}"))]
        # a warm run reuses its cold run's cache, so it comes after it
        order = cold + warm_runs if r % 2 == 0 else cold[::-1] + warm_runs[::-1]
        arm_env = {**env, "HF_DATASETS_CACHE": str(work / f"hf-datasets-{r}")}  # empty at the round's cold trl run
        for name, cmd in order:
            wall, out = timed(cmd, arm_env)
            walls[name].append(wall)
            if name.startswith("aya"):
                out_dir = work / f"{'aya-warm' if name == 'aya_warm' else 'aya'}-{r}"
                runtime, tokens = aya_tokens(out_dir / "overhead")
            else:
                m = json.loads(re.search(r"PLAIN_TRL (\{.*\})", out).group(1))
                runtime, tokens = m["train_runtime"], m["num_tokens"]
            speed[name][0] += runtime
            speed[name][1] += tokens
            print(f"round {r + 1} {name}: wall {wall:6.1f}s  train {runtime:6.1f}s  {tokens / runtime:8.0f} tokens/s",
                  flush=True)

    tok_s = {name: speed[name][1] / speed[name][0] for name in speed}
    setup = {name: (sum(walls[name]) - speed[name][0]) / a.rounds for name in walls}
    ratio = sum(walls["aya"]) / sum(walls["trl"])
    warm_ratio = sum(walls["aya_warm"]) / sum(walls["trl_warm"])
    print()
    print(machine_line())
    print(f"tiny Llama, demo training rows ({sum(1 for _ in open(data))}), {a.steps} steps, batch {a.batch}, "
          f"max_length {a.max_length}, padded batches in both arms, {a.rounds} rounds alternating")
    labels = {"aya": "aya-train", "aya_warm": "aya-train rerun (cache warm)", "trl": "plain trl",
              "trl_warm": "plain trl rerun (cache warm)"}
    print_table(["arm", "wall s per run (mean)", "walls", "wall - training s (mean)", "train tokens/s"], [
        [label, f"{sum(walls[name]) / a.rounds:.1f}", " ".join(f"{w:.1f}" for w in walls[name]), f"{setup[name]:.1f}",
         f"{tok_s[name]:.0f}"] for name, label in labels.items()
    ])
    print(f"ratio aya/trl: cold {ratio:.3f}, rerun with warm cache {warm_ratio:.3f}")
    print(json.dumps({"ratio": round(ratio, 3), "warm_ratio": round(warm_ratio, 3), "aya_tokens_per_s": round(tok_s["aya"]),
                      "trl_tokens_per_s": round(tok_s["trl"]),
                      "setup_s": {name: round(v, 2) for name, v in setup.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
