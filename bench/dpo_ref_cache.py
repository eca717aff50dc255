"""DPO reference log-probs: recomputed in every run of a beta sweep vs. computed once and reused from the
stage's cache; and peak memory with the reference model resident vs. cached log-probs.

    python bench/dpo_ref_cache.py                      # defaults: tiny model widened to hidden 256 x 4 layers
    python bench/dpo_ref_cache.py --hidden 64 --layers 2 --steps 10    # the demo's tiny model, quick

Each configuration runs `aya-train recipe=demo` (only its dpo stage, from the base model) in a fresh process:
- recompute: every beta in its own run folder, so every run computes the reference log-probs (plain trl);
- cached: every beta in one run folder, so the first run computes them and the others read the cache;
- resident: precompute_ref_log_probs=false, the reference model stays in memory and runs every step.
Printed: stage wall time per run (from the manifest) and peak RSS per process. Last line JSON:
{"sweep_speedup": recompute sweep time / cached sweep time, "peak_rss_ratio": cached / resident peak RSS, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine_line, print_table  # noqa: E402

BETAS = (0.05, 0.1, 0.2)
# Runs aya_train in this process and reports its own peak RSS (kB on Linux) on the last line.
RUNNER = ("import resource, sys\nfrom aya_train.cli import main\nrc = main(sys.argv[1:])\n"
          "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")


def demo_stage_names() -> list:
    from aya_train.recipe import compose_recipe

    return list(compose_recipe("demo").stages)


def run_dpo(out: Path, cache: Path, name: str, beta: float, args: argparse.Namespace, extra=()) -> dict:
    overrides = [
        "recipe=demo", f"run.output_dir={out}", f"run.cache_dir={cache}", f"run.name={name}", "run.force=true",
        *(f"~stages.{other}" for other in demo_stage_names() if other != "dpo"),
        "stages.dpo.init=null", f"stages.dpo.beta={beta}",
        f"stages.dpo.max_steps={args.steps}", "stages.dpo.eval_steps=null", "stages.dpo.measure_fidelity=false",
        "stages.dpo.per_device_train_batch_size=8", f"data.pref.mixture.budget={args.pairs}",
        "data.pref.max_eval_rows_per_language=2", f"model.tiny.hidden_size={args.hidden}",
        f"model.tiny.intermediate_size={4 * args.hidden}", f"model.tiny.num_hidden_layers={args.layers}", *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, *overrides], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"run {name} beta={beta} failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(proc.stdout.strip().splitlines()[-1].split()[-1])
    stage = json.loads((out / name / "manifest.json").read_text())["stages"]["dpo"]
    return {"seconds": stage["finished"] - stage["started"], "peak_rss_mb": rss_kb / 1024,
            "ref_logps": sorted(set(stage["summary"]["ref_logps"].values())) or ["-"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256, help="tiny model width")
    parser.add_argument("--layers", type=int, default=4, help="tiny model depth")
    parser.add_argument("--steps", type=int, default=30, help="DPO steps per run")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs (data.pref.mixture.budget)")
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="aya-bench-dpo-") as tmp:
        out, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        run_dpo(out, cache, "warmup", BETAS[0], args, ["stages.dpo.max_steps=1"])  # builds the tiny model once
        recompute = [run_dpo(out, cache, f"recompute-{b}", b, args) for b in BETAS]
        cached = [run_dpo(out, cache, "cached", b, args) for b in BETAS]
        resident = run_dpo(out, cache, "resident", BETAS[0], args, ["stages.dpo.precompute_ref_log_probs=false"])
    rows = [[f"recompute beta={b}", f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", ",".join(r["ref_logps"])]
            for b, r in zip(BETAS, recompute)]
    rows += [[f"cached beta={b}", f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", ",".join(r["ref_logps"])]
             for b, r in zip(BETAS, cached)]
    rows.append([f"resident beta={BETAS[0]}", f"{resident['seconds']:.1f}", f"{resident['peak_rss_mb']:.0f}",
                 "reference model in memory"])
    print_table(["run", "stage seconds", "peak RSS MB", "reference log-probs"], rows)
    sweep_recompute, sweep_cached = sum(r["seconds"] for r in recompute), sum(r["seconds"] for r in cached)
    print(f"sweep of {len(BETAS)} betas: recompute {sweep_recompute:.1f} s vs cached {sweep_cached:.1f} s; "
          f"peak RSS cached {cached[0]['peak_rss_mb']:.0f} MB vs resident {resident['peak_rss_mb']:.0f} MB")
    print(json.dumps({
        "sweep_speedup": round(sweep_recompute / sweep_cached, 3),
        "peak_rss_ratio": round(cached[0]["peak_rss_mb"] / resident["peak_rss_mb"], 3),
        "sweep_recompute_s": round(sweep_recompute, 1), "sweep_cached_s": round(sweep_cached, 1),
        "peak_rss_cached_mb": round(cached[0]["peak_rss_mb"]), "peak_rss_resident_mb": round(resident["peak_rss_mb"]),
        "model": {"hidden": args.hidden, "layers": args.layers}, "steps": args.steps, "pairs": args.pairs,
    }))


if __name__ == "__main__":
    main()
