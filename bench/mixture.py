"""Benchmark: plan a mixture over 10,000,000 synthetic rows (100 languages x 20 tasks x 5 sources).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/mixture.py            # full size
    PYTHONPATH=. python bench/mixture.py --rows 1000000 --unit tokens

Rows are an Arrow table with dictionary-encoded label columns, languages Zipf-sized (so temperature and
caps matter). Timed: aya_train.data.mixture.plan_mixture with language alpha 0.3, source weights, a
fixed task share and max_epochs caps. Peak RSS is the whole process (the synthetic table included).
Baseline, side by side: the same plan done the per-row Python way
(dict of row lists per group, random.sample per group) on a subsample, scaled linearly to the full size.
Goal: <= 5 s and <= 1.5 GB peak RSS on a 2-core machine. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time

import numpy as np
import pyarrow as pa

from aya_train.config import MixtureConfig, MixtureLevelConfig
from aya_train.data.mixture import plan_mixture

GOAL_SECONDS, GOAL_GB = 5.0, 1.5


def synthetic_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    languages = [f"l{i:03d}" for i in range(100)]
    zipf = 1.0 / np.arange(1, 101) ** 1.1  # the largest language ~100x the smallest
    lang = rng.choice(100, size=rows, p=zipf / zipf.sum()).astype(np.int16)
    task = rng.integers(0, 20, size=rows, dtype=np.int16)
    source = rng.integers(0, 5, size=rows, dtype=np.int16)

    def column(codes, names):
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int16()), pa.array(names, pa.string()))

    return pa.table({"source": column(source, [f"src{i}" for i in range(5)]),
                     "language": column(lang, languages), "task": column(task, [f"task{i:02d}" for i in range(20)])})


def config(rows: int, unit: str) -> MixtureConfig:
    return MixtureConfig(
        budget=rows if unit == "examples" else rows * 100, unit=unit,
        source=MixtureLevelConfig(weights={"src0": 2.0, "src4": 0.5}),
        language=MixtureLevelConfig(alpha=0.3, max_epochs=4.0),
        task=MixtureLevelConfig(shares={"task00": 0.1}),
    )


def baseline_seconds(table: pa.Table, rows: int, sample: int, seed: int = 0) -> float:
    """Per-row Python plan on `sample` rows, scaled to `rows` (same group targets, examples)."""
    sub = table.slice(0, sample)
    # the group targets come from the numpy plan, untimed: the baseline times only the per-row work
    plan = plan_mixture({c: sub.column(c) for c in ("source", "language", "task")}, config(sample, "examples"), seed)
    start = time.perf_counter()
    groups: dict = {}
    cols = [sub.column(c).to_pylist() for c in ("source", "language", "task")]
    for i, key in enumerate(zip(*cols)):
        groups.setdefault(key, []).append(i)
    rng = random.Random(seed)
    picked = []
    for key, target in zip(plan.groups, plan.realised_rows):
        members = groups[key]
        full, rest = divmod(int(target), len(members))
        picked.extend(members * full)
        picked.extend(rng.sample(members, rest))
    picked.sort()
    return (time.perf_counter() - start) * rows / sample


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--unit", choices=("examples", "tokens"), default="examples")
    parser.add_argument("--baseline-rows", type=int, default=500_000)
    args = parser.parse_args()

    table = synthetic_table(args.rows)
    sizes = np.random.default_rng(1).integers(20, 2000, size=args.rows) if args.unit == "tokens" else None
    labels = {c: table.column(c) for c in ("source", "language", "task")}
    start = time.perf_counter()
    plan = plan_mixture(labels, config(args.rows, args.unit), seed=0, sizes=sizes)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is KiB on Linux
    base = baseline_seconds(table, args.rows, min(args.baseline_rows, args.rows))

    print(f"rows {args.rows:,} in {len(plan.groups):,} groups, unit {args.unit}, planned {plan.indices.size:,} rows "
          f"({plan.realised_units.sum():,.0f} {args.unit}), {int(plan.capped.sum())} groups capped, digest {plan.digest}")
    print(f"{'':24}{'aya_train (numpy)':>20}{'per-row Python':>18}{'goal':>8}")
    print(f"{'seconds':24}{seconds:>20.2f}{base:>18.2f}{GOAL_SECONDS:>8.1f}")
    print(f"{'peak RSS (GB, process)':24}{peak_gb:>20.2f}{'-':>18}{GOAL_GB:>8.1f}")
    print(f"speed-up vs per-row Python (scaled from {min(args.baseline_rows, args.rows):,} rows): {base / seconds:.1f}x")
    print(json.dumps({"seconds": round(seconds, 3), "peak_rss_gb": round(peak_gb, 3), "rows": args.rows,
                      "unit": args.unit, "baseline_seconds": round(base, 3)}))


if __name__ == "__main__":
    main()
