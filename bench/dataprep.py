"""Data preparation speed: read, validate, template and tokenise N synthetic multilingual rows, then again.

    OMP_NUM_THREADS=1 python bench/dataprep.py                   # 1,000,000 rows (several minutes on 2 cores)
    OMP_NUM_THREADS=1 python bench/dataprep.py --rows 100000 --num-proc 2

The rows are conversations of the demo corpus (27 languages), recombined (1-3 exchanges of one language, a
running number appended so that no two rows are equal) and written to one jsonl file. Each run is a fresh
process doing what the SFT stage does before its first step: load the data set (read, validate, languages,
split, mixture, data report with token counts) and build the trainer (chat template, tokenise, labels,
truncate, pack: `batching=auto`), with `--num-proc` processes for trl's dataset preparation
(`stages.sft.args.dataset_num_proc`). The second run uses the same cache folder: the prepared data is found by
its fingerprint (rows + tokenizer + chat template + max length + preparation settings) and nothing is
tokenised for training again. Baseline, side by side: plain trl preparing the same file
(`load_dataset("json")` + `SFTTrainer`, same num_proc), which validates nothing and caches nothing in memory
datasets. Last line: {"rows_per_s": first run, "cached_rerun_s": second run, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPE = """\
# bench/dataprep.py
defaults:
  - /aya_train
  - /stage@stages.sft: sft
  - _self_
run:
  name: {name}
  output_dir: {out}
  cache_dir: {cache}
model:
  name_or_path: {model}
data:
  sft:
    sources: [{{path: {data}, format: messages}}]
stages:
  sft:
    data: sft
    max_length: 256
    per_device_train_batch_size: 16
    args: {args}
"""


def synthesise(work: Path, rows: int) -> tuple[str, Path]:
    """Tiny model folder and a jsonl file of `rows` multilingual conversations."""
    from aya_train.pipeline import DataCache, base_model_path, process_state
    from aya_train.recipe import compose_recipe

    cfg = compose_recipe("demo", [f"run.output_dir={work / 'export'}", f"run.cache_dir={work / 'model'}"])
    model = base_model_path(cfg, process_state())
    demo = DataCache(cfg)("sft").train
    by_language: dict = {}
    for messages, language in zip(demo["messages"], demo["language"]):
        by_language.setdefault(language, []).append([m for m in messages if m["role"] != "system"])
    languages = sorted(by_language)
    rng = random.Random(0)
    path = work / "rows.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            language = languages[i % len(languages)]
            messages = []
            for conv in rng.sample(by_language[language], k=min(len(by_language[language]), rng.randint(1, 3))):
                messages.extend(conv[:2])
            messages[0] = {"role": "user", "content": f"{messages[0]['content']} ({i})"}
            f.write(json.dumps({"messages": messages, "language": language}, ensure_ascii=False) + "\n")
    return model, path


def run_aya(recipe: str) -> None:
    """One fresh process: what the SFT stage does before training, timed by phase (printed as JSON)."""
    from aya_train.artifacts import RunDir
    from aya_train.modeling import load_model, load_tokenizer
    from aya_train.pipeline import DataCache, process_state, run_dir_for
    from aya_train.recipe import compose_recipe
    from aya_train.stages.common import StageContext
    from aya_train.stages.sft import build_trainer

    t0 = time.perf_counter()
    cfg = compose_recipe(recipe)
    state = process_state()
    data = DataCache(cfg)("sft")
    t1 = time.perf_counter()
    ctx = StageContext(name="sft", cfg=cfg.stages.sft, root=cfg, run_dir=RunDir(run_dir_for(cfg).root),
                       base_model=cfg.model.name_or_path, load_data=DataCache(cfg), state=state)
    tok = load_tokenizer(cfg.model, cfg.model.name_or_path)
    trainer = build_trainer(ctx, data, tok, load_model(cfg.model, cfg.model.name_or_path))
    t2 = time.perf_counter()
    cache = trainer.prepared_cache
    print("AYA " + json.dumps({"load_s": t1 - t0, "prepare_s": t2 - t1, "rows": len(data.train) + len(data.eval),
                               "train_rows_prepared": len(trainer.train_dataset), "batching": trainer.batching,
                               "cache_hits": len(cache.hits), "cache_misses": len(cache.misses)}))


def run_trl(data: str, model: str, num_proc: int, out: str) -> None:
    """Plain trl: read the same file and let SFTTrainer template and tokenise it (packing, as trl's docs advise)."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    rows = load_dataset("json", data_files=data, split="train")
    tok = AutoTokenizer.from_pretrained(model)
    args = SFTConfig(output_dir=out, max_length=256, packing=True, assistant_only_loss=True, report_to="none",
                     use_cpu=not torch.cuda.is_available(), bf16=False, dataset_num_proc=num_proc or None)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args,
                         train_dataset=rows.select_columns(["messages"]), processing_class=tok)
    print("TRL " + json.dumps({"prepare_s": time.perf_counter() - t0, "rows": len(rows),
                               "train_rows_prepared": len(trainer.train_dataset)}))


def child(args: list[str], env: dict, tag: str) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith(tag + " "))
    return wall, json.loads(line[len(tag) + 1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--num-proc", type=int, default=0, help="processes for trl's dataset preparation (0: one, trl's default)")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-trl arm")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        if a.child[0] == "aya":
            run_aya(a.child[1])
        else:
            run_trl(a.child[1], a.child[2], int(a.child[3]), a.child[4])
        return 0

    from bench.common import machine_line, print_table

    work = Path(tempfile.mkdtemp(prefix="aya-bench-dataprep-"))
    t = time.perf_counter()
    model, data = synthesise(work, a.rows)
    print(f"{a.rows} synthetic rows written in {time.perf_counter() - t:.1f}s: {data}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    extra = json.dumps({"dataset_num_proc": a.num_proc}) if a.num_proc else "{}"
    results = {}
    for name in ("first", "rerun"):
        recipe = work / f"{name}.yaml"
        recipe.write_text(RECIPE.format(name=name, out=work / "runs", cache=work / "cache", model=model, data=data,
                                        args=extra), encoding="utf-8")
        results[name] = child(["--child", "aya", str(recipe)], env, "AYA")
        wall, m = results[name]
        print(f"aya {name}: wall {wall:.1f}s (load+validate+report {m['load_s']:.1f}s, template+tokenise+pack "
              f"{m['prepare_s']:.1f}s; prepared-data cache hits {m['cache_hits']}, misses {m['cache_misses']})",
              flush=True)
    if not a.no_baseline:
        results["trl"] = child(["--child", "trl", str(data), model, str(a.num_proc), str(work / "trl")], env, "TRL")
        print(f"plain trl: wall {results['trl'][0]:.1f}s (read+template+tokenise+pack {results['trl'][1]['prepare_s']:.1f}s)",
              flush=True)

    first_wall, first = results["first"]
    rerun_wall, rerun = results["rerun"]
    rows = [["aya_train, first run", f"{first_wall:.1f}", f"{first['load_s']:.1f}", f"{first['prepare_s']:.1f}",
             f"{a.rows / first_wall:.0f}"],
            ["aya_train, rerun (cached)", f"{rerun_wall:.1f}", f"{rerun['load_s']:.1f}", f"{rerun['prepare_s']:.1f}",
             f"{a.rows / rerun_wall:.0f}"]]
    if "trl" in results:
        rows.append(["plain trl (no validation)", f"{results['trl'][0]:.1f}", "-", f"{results['trl'][1]['prepare_s']:.1f}",
                     f"{a.rows / results['trl'][0]:.0f}"])
    print()
    print(machine_line())
    print(f"{a.rows} rows, max_length 256, dataset_num_proc {a.num_proc or 1}, batching {first['batching']}; "
          "wall includes process start-up")
    print_table(["run", "wall s", "load+validate s", "template+tokenise s", "rows/s"], rows)
    figures = {"rows_per_s": round(a.rows / first_wall), "cached_rerun_s": round(rerun_wall, 1),
               "first_run_s": round(first_wall, 1)}
    if "trl" in results:
        figures["trl_rows_per_s"] = round(a.rows / results["trl"][0])
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
