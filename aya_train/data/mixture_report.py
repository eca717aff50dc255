"""The data report of one data set: mixture table per source x language x task (available rows and tokens,
target and realised shares, epochs, rows not sampled), quarantined rows per reason, tokenizer fertility and
truncation per language. Written to `<run>/data/<set>/mixture.{json,md,png}` and recorded in manifest.json.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from aya_train.artifacts import RunDir, atomic_write_json, atomic_write_text

JSON_FILE, MD_FILE, PNG_FILE = "mixture.json", "mixture.md", "mixture.png"
# The chart is drawn on one background thread: importing matplotlib and rendering (~0.5 s) would otherwise
# delay training. pipeline.run calls wait_for_charts() before it returns.
_charts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aya-train-chart")
_pending: List[Future] = []


def report_dict(data: Any, name: str) -> Dict[str, Any]:
    """JSON-ready report of a loaded (and mixed) data set."""
    plan, summary = data.plan, data.summary
    groups: List[Dict[str, Any]] = []
    if plan is not None:
        total_target, total_real = float(plan.target.sum()) or 1.0, float(plan.realised_units.sum()) or 1.0
        for g, (source, language, task) in enumerate(plan.groups):
            rows, real_rows = int(plan.rows[g]), int(plan.realised_rows[g])
            groups.append({
                "source": source, "language": language, "task": task, "rows": rows,
                "tokens": None if plan.tokens is None else int(plan.tokens[g]), "target_share": float(plan.target[g]) / total_target,
                "realised_share": float(plan.realised_units[g]) / total_real, "sampled_rows": real_rows,
                "epochs": real_rows / rows if rows else 0.0,
                "not_sampled": rows - int(plan.distinct_rows[g]), "capped": bool(plan.capped[g]),
            })
    over, by_language = summary.over_length, summary.rows_by_language
    mix = _by_language(groups)
    return {
        "data_set": name, "kind": data.kind, "unit": plan.unit if plan else None,
        "budget": plan.budget if plan else None, "reachable": plan.reachable if plan else None,
        "plan_digest": plan.digest if plan else None,
        "available_rows": int(data.available.num_rows), "train_rows": int(data.train.num_rows),
        "eval_rows": int(data.eval.num_rows), "groups": groups,
        "quarantined": summary.quarantined, "excluded": summary.excluded, "adjusted": summary.adjusted,
        "language_inferred": summary.language_inferred, "inferred_by_language": summary.inferred_by_language,
        "max_length": summary.max_length,
        "languages": {lang: {"rows": rows, **mix.get(lang, {}), **summary.fertility.get(lang, {}),
                             "over_length": over.get(lang, 0),
                             "truncation_rate": over.get(lang, 0) / rows if rows else 0.0}
                      for lang, rows in by_language.items()},
    }


def _by_language(groups: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Mixture figures summed over sources and tasks: train rows, natural / target / realised share, epochs."""
    total = sum(g["rows"] for g in groups) or 1
    out: Dict[str, Dict[str, Any]] = {}
    for g in groups:
        acc = out.setdefault(g["language"], {"train_rows": 0, "natural_share": 0.0, "target_share": 0.0,
                                             "realised_share": 0.0, "sampled_rows": 0})
        acc["train_rows"] += g["rows"]
        acc["natural_share"] += g["rows"] / total
        acc["target_share"] += g["target_share"]
        acc["realised_share"] += g["realised_share"]
        acc["sampled_rows"] += g["sampled_rows"]
    for acc in out.values():
        acc["epochs"] = acc["sampled_rows"] / acc["train_rows"] if acc["train_rows"] else 0.0
    return out


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(report: Dict[str, Any]) -> str:
    """The report as Markdown (the model card embeds it): per language, bad rows, then every group."""
    lines = [f"### Data set `{report['data_set']}` ({report['kind']})", ""]
    if report["unit"]:
        lines += [f"Budget: {report['budget']:,.0f} {report['unit']} (reachable under the caps: "
                  f"{report['reachable']:,.0f}); {report['available_rows']:,} rows available, "
                  f"{report['train_rows']:,} planned for training, {report['eval_rows']:,} held out for evaluation. "
                  f"Plan digest `{report['plan_digest']}`. Shares are of {report['unit']}; natural = share of the "
                  "available training rows.", ""]
    if report["languages"]:
        lines += ["| language | train rows | natural share | target share | realised share | epochs | tokens/char | "
                  "tokens/word | over max_length | truncation rate |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for lang, v in report["languages"].items():
            lines.append(f"| {lang} | {v.get('train_rows', v['rows']):,} | {_pct(v.get('natural_share'))} | {_pct(v.get('target_share'))} | "
                         f"{_pct(v.get('realised_share'))} | {_num(v.get('epochs'), '.2f')} | "
                         f"{_num(v.get('tokens_per_char'), '.3f')} | {_num(v.get('tokens_per_word'), '.2f')} | "
                         f"{v['over_length']:,} | {_pct(v['truncation_rate'])} |")
        lines.append("")
    q = report["quarantined"] or {}
    lines.append(f"Bad rows (on_error: {q.get('on_error', 'raise')}): {q.get('total', 0):,}"
                 + (f", in `{q['file']}`" if q.get("file") else ""))
    for reason, count in (q.get("by_reason") or {}).items():
        lines.append(f"- {reason}: {count:,}")
    for title, counts in (("Left out by design", report["excluded"]), ("Kept after a change", report["adjusted"])):
        if counts:
            lines.append(f"\n{title}:")
            lines += [f"- {reason}: {count:,}" for reason, count in counts.items()]
    if report["language_inferred"]:
        per = ", ".join(f"{lang} {v['rows']:,} (mean confidence {v['mean_confidence']:.2f})"
                        for lang, v in report["inferred_by_language"].items())
        lines.append(f"\nLanguage identified offline for {report['language_inferred']:,} rows: {per}.")
    if report["groups"]:
        lines += ["", f"<details><summary>All {len(report['groups'])} groups (source x language x task)</summary>", "",
                  "| source | language | task | rows | tokens | target share | realised share | epochs | not sampled |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for g in report["groups"]:
            cap = " (capped)" if g["capped"] else ""
            lines.append(f"| {g['source']} | {g['language']} | {g['task']} | {g['rows']:,} | {_num(g['tokens'], ',')} | "
                         f"{_pct(g['target_share'])} | {_pct(g['realised_share'])} | {g['epochs']:.2f}{cap} | "
                         f"{g['not_sampled']:,} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def plot(report: Dict[str, Any], path: Path, top: int = 40) -> None:
    """Bar chart of available vs target vs realised share per language (sum over sources and tasks)."""
    # matplotlib's object API, not pyplot: no global figure state, so it can draw off the main thread
    from matplotlib.figure import Figure

    by_lang: Dict[str, np.ndarray] = {}
    total_rows = sum(g["rows"] for g in report["groups"]) or 1
    for g in report["groups"]:
        acc = by_lang.setdefault(g["language"], np.zeros(3))
        acc += (g["rows"] / total_rows, g["target_share"], g["realised_share"])
    names = sorted(by_lang, key=lambda k: -by_lang[k][0])[:top]
    values = np.array([by_lang[k] for k in names]).reshape(-1, 3)
    fig = Figure(figsize=(max(6, 0.35 * len(names) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(names))
    for i, label in enumerate(("available rows", "target share", "realised share")):
        ax.bar(x + (i - 1) * 0.27, 100 * values[:, i], width=0.27, label=label)
    ax.set_xticks(x, names, rotation=90 if len(names) > 12 else 0)
    ax.set_ylabel(f"% of the mixture ({report['unit'] or 'rows'})")
    ax.set_title(f"data set {report['data_set']}: mixture by language")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def wait_for_charts() -> None:
    """Wait for the charts being drawn in the background; raise the first drawing error."""
    while _pending:
        _pending.pop(0).result()


def write_report(data: Any, name: str, out: Path) -> Dict[str, str]:
    """Write mixture.json and mixture.md into `out` and start drawing mixture.png; return their paths."""
    report = report_dict(data, name)
    atomic_write_json(out / JSON_FILE, report)
    atomic_write_text(out / MD_FILE, markdown(report))
    files = {"json": str(out / JSON_FILE), "markdown": str(out / MD_FILE)}
    if report["groups"]:
        _pending.append(_charts.submit(plot, report, out / PNG_FILE))
        files["png"] = str(out / PNG_FILE)
    if report["quarantined"].get("file"):
        files["quarantine"] = report["quarantined"]["file"]
    return files


def record_in_manifest(run_root: Path, name: str, data: Any, files: Dict[str, str]) -> None:
    """manifest.json["data"][name] = report files, fingerprint, plan digest, bad-row counts."""
    run_dir = RunDir(Path(run_root))
    manifest = run_dir.load_manifest()
    q = data.summary.quarantined or {}
    manifest.setdefault("data", {})[name] = {
        "report": files, "kind": data.kind, "plan_digest": data.plan.digest if data.plan else None,
        "train_rows": int(data.train.num_rows), "eval_rows": int(data.eval.num_rows),
        "quarantined": q.get("total", 0),
    }
    atomic_write_json(run_dir.manifest_path, manifest)


def read_report(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
