"""Evaluate stage: per-language win-rates against a baseline, with bootstrap confidence intervals, and
language fidelity, for any list of named models on held-out prompts.

Life cycle: held-out prompts per language -> one set of responses per model (aya_train.generation, the same
sampling settings and seed for all) -> pairwise outcomes against the baseline from the judge -> win-rates
(aya_train.metrics.winrate) and fidelity (aya_train.metrics.fidelity) -> win_rates.json / .md / .png,
generations/, metrics.jsonl in the stage folder. Runs on the main process; other ranks wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Sequence

from aya_train.artifacts import atomic_write_json, atomic_write_text
from aya_train.metrics import winrate
from aya_train.stages.common import StageContext, StageResult


def held_out_prompts(loaded: Any, per_language: int | None) -> Dict[str, list]:
    """{prompt, language, id} of a data set's held-out split, as the rl stage and the fidelity measurements
    take them (aya_train.data.contrast.as_prompts: conversations without their last reply, or preference
    pairs' prompts); at most `per_language` per language, in split order."""
    from aya_train.data.contrast import as_prompts

    held = as_prompts(loaded).eval
    out: Dict[str, list] = {"prompt": [], "language": [], "id": []}
    taken: Dict[str, int] = {}
    for prompt, lang, row_id in zip(held["prompt"], held["language"], held["id"]):
        if per_language is not None and taken.get(lang, 0) >= per_language:
            continue
        taken[lang] = taken.get(lang, 0) + 1
        for key, value in (("prompt", prompt), ("language", lang), ("id", row_id)):
            out[key].append(value)
    if not out["prompt"]:
        raise ValueError("no held-out prompts: the data set's eval split is empty (raise its eval_fraction)")
    return out


def build_judge(ctx: StageContext):
    from aya_train.metrics.judge import EndpointJudge, RewardModelJudge

    c = ctx.cfg
    if c.judge_endpoint.base_url:
        e = c.judge_endpoint
        return EndpointJudge(e.base_url, e.model, api_key_env=e.api_key_env, swap_positions=e.swap_positions,
                             timeout_s=e.timeout_s)
    return RewardModelJudge.from_path(ctx.model_path(c.judge), ctx.root.model, work_dir=ctx.stage_dir / "judge_model",
                                      name=c.judge, batch_size=c.judge_batch_size, max_length=c.judge_max_length)


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    data = ctx.load_data(c.data)
    if ctx.state.is_main_process:
        evaluate(ctx, held_out_prompts(data, c.max_prompts_per_language))
    ctx.state.wait_for_everyone()
    results = json.loads((ctx.stage_dir / "win_rates.json").read_text(encoding="utf-8"))
    return StageResult(languages=language_table(results), data_fingerprint=data.fingerprint,
                       summary={name: {"win_rate": r["win_rates"][winrate.ALL]["win_rate"],
                                       "ci": [r["win_rates"][winrate.ALL]["ci_low"], r["win_rates"][winrate.ALL]["ci_high"]]}
                                for name, r in results["models"].items()})


def evaluate(ctx: StageContext, held: Dict[str, list]) -> Dict[str, Any]:
    from aya_train.generation import generate_from_path, sampling_settings
    from aya_train.metrics.fidelity import fidelity_rates

    c = ctx.cfg
    settings = sampling_settings(c.sampling)
    prompts, languages = held["prompt"], held["language"]
    generations = {}
    for name in dict.fromkeys([c.baseline, *c.models]):  # each model generates once, the baseline first
        generations[name] = generate_from_path(ctx.model_path(name), ctx.root.model, prompts, settings)
        _write_jsonl(ctx.stage_dir / "generations" / f"{name}.jsonl",
                     [{"id": i, "language": lang, "prompt": p, "response": r}
                      for i, lang, p, r in zip(held["id"], languages, prompts, generations[name].responses)])
    judge = build_judge(ctx)
    base = generations[c.baseline].responses
    results: Dict[str, Any] = {
        "baseline": c.baseline, "judge": judge.name, **generations[c.baseline].record(),
        "prompts_per_language": {lang: languages.count(lang) for lang in sorted(set(languages))},
        "bootstrap": {"samples": c.bootstrap_samples, "confidence": c.confidence, "seed": ctx.root.run.seed},
        "models": {},
    }
    records = []
    for name in dict.fromkeys([c.baseline, *c.models]):
        fidelity = fidelity_rates(generations[name].responses, languages, generations[name].record())
        entry: Dict[str, Any] = {"language_fidelity": fidelity.rates, "language_fidelity_mean": fidelity.mean}
        record = {"step": 0, "model": name, "baseline": c.baseline, **fidelity.metrics("eval")}
        if name in c.models:
            outcomes = judge.compare(prompts, generations[name].responses, base)
            rates = winrate.win_rates(outcomes, languages, samples=c.bootstrap_samples, confidence=c.confidence,
                                      seed=ctx.root.run.seed)
            entry["win_rates"] = {lang: r.to_dict() for lang, r in rates.items()}
            record.update(winrate.metrics(rates, "eval"))
            _write_jsonl(ctx.stage_dir / "outcomes" / f"{name}.jsonl",
                         [{"id": i, "language": lang, "outcome": o} for i, lang, o in zip(held["id"], languages, outcomes)])
            results["models"][name] = entry
        else:
            results["baseline_language_fidelity"] = entry
        records.append(record)
    # One record per model; written whole, so a rerun after a crash never duplicates lines.
    _write_jsonl(ctx.stage_dir / "metrics.jsonl", records)
    atomic_write_json(ctx.stage_dir / "win_rates.json", results)
    atomic_write_text(ctx.stage_dir / "win_rates.md", markdown_table(results))
    plot(results, ctx.stage_dir / "win_rates.png")
    return results


def _fmt_rate(r: Dict[str, float]) -> str:
    return f"{r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def language_table(results: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per language: each model's win-rate [interval] against the baseline, and its language fidelity."""
    langs = list(results["prompts_per_language"]) + [winrate.ALL]
    baseline_fid = results.get("baseline_language_fidelity", {})
    table: Dict[str, Dict[str, Any]] = {}
    for lang in langs:
        row: Dict[str, Any] = {"prompts": results["prompts_per_language"].get(lang, sum(results["prompts_per_language"].values()))}
        for name, entry in results["models"].items():
            row[f"{name} win_rate"] = _fmt_rate(entry["win_rates"][lang])
            row[f"{name} fidelity"] = entry["language_fidelity_mean"] if lang == winrate.ALL else entry["language_fidelity"].get(lang)
        if baseline_fid:
            row[f"{results['baseline']} fidelity"] = (baseline_fid["language_fidelity_mean"] if lang == winrate.ALL
                                                      else baseline_fid["language_fidelity"].get(lang))
        table[lang] = row
    return table


def markdown_table(results: Dict[str, Any]) -> str:
    table = language_table(results)
    columns = list(next(iter(table.values())).keys())
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"Win-rate against `{results['baseline']}` judged by `{results['judge']}` (ties count half), "
             f"{int(results['bootstrap']['confidence'] * 100)}% bootstrap intervals over prompts; `all` is the mean "
             f"over languages. Sampling: {json.dumps(results['sampling'])} ({results['backend']}).", "",
             "| language | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {lang} | " + " | ".join(fmt(row[c]) for c in columns) + " |" for lang, row in table.items()]
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], path: Path) -> None:
    """Grouped bars: win-rate per language and model, interval as error bars, 0.5 (parity) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs = list(results["prompts_per_language"]) + [winrate.ALL]
    models = list(results["models"])
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(min(20.0, max(6.0, 0.12 * len(langs) * max(len(models), 1) + 2)), 4.5))
    x = np.arange(len(langs))
    for k, name in enumerate(models):
        rates = [results["models"][name]["win_rates"][lang] for lang in langs]
        mid = np.array([r["win_rate"] for r in rates])
        err = np.array([[m - r["ci_low"] for m, r in zip(mid, rates)], [r["ci_high"] - m for m, r in zip(mid, rates)]])
        ax.bar(x + (k - (len(models) - 1) / 2) * width, mid, width, yerr=err, capsize=2, label=name)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, langs, rotation=60)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"win-rate vs {results['baseline']}")
    ax.set_title(f"judge: {results['judge']}, {int(results['bootstrap']['confidence'] * 100)}% bootstrap intervals")
    ax.legend(fontsize="small", ncol=max(1, len(models)), loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_jsonl(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
