"""What the terminal shows: the stage graph and data summary of a dry run, and the per-language table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

console = Console()


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_plan(cfg: DictConfig, run_dir, data) -> None:
    """Rows per language and task for every data set a stage uses (the stage plan is printed before it)."""
    used = (OmegaConf.select(node, "data", default=None) for node in cfg.stages.values())
    for ds_name in dict.fromkeys(name for name in used if name):
        loaded = data(ds_name)
        for column in ("language", "task"):
            train, held = Counter(loaded.train[column]), Counter(loaded.eval[column])
            other = "task" if column == "language" else "language"
            spread = {}
            for key, value in zip(loaded.train[column], loaded.train[other]):
                spread.setdefault(key, set()).add(value)
            table = Table(title=f"data set `{ds_name}` by {column} (fingerprint {loaded.fingerprint})")
            for name in (column, "train rows", "eval rows", f"{other}s"):
                table.add_column(name, justify="left" if name == column else "right")
            for key in sorted(set(train) | set(held)):
                table.add_row(key, str(train[key]), str(held[key]), str(len(spread.get(key, ()))))
            table.add_section()
            table.add_row("all", str(len(loaded.train)), str(len(loaded.eval)), "")
            console.print(table)


def print_mixture(name: str, loaded) -> None:
    """The mixture plan of a data set per language (the full source x language x task table is in the report);
    printed by the main process whenever a run loads the data set, dry runs included."""
    from aya_train.data.mixture_report import report_dict

    if loaded.plan is None:
        return
    rep = report_dict(loaded, name)
    table = Table(title=f"data set `{name}`: mixture plan, {rep['budget']:,.0f} {rep['unit']} "
                        f"(digest {rep['plan_digest']})")
    columns = ("language", "train rows", "natural", "target", "realised", "epochs", "tok/char", "over max_len")
    for column in columns:
        table.add_column(column, justify="left" if column == "language" else "right")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    for lang, v in rep["languages"].items():
        tpc = v.get("tokens_per_char")
        table.add_row(lang, f"{v.get('train_rows', v['rows']):,}", pct(v.get("natural_share")), pct(v.get("target_share")),
                      pct(v.get("realised_share")), f"{v.get('epochs', 0):.2f}", "-" if tpc is None else f"{tpc:.3f}",
                      f"{v['over_length']:,}")
    console.print(table)
    q = rep["quarantined"] or {}
    if q.get("total"):
        console.print(f"bad rows quarantined: {q['total']:,} ({', '.join(f'{k}: {v}' for k, v in q['by_reason'].items())})"
                      f" -> {q['file']}")
    if loaded.report_dir is not None:
        console.print(f"data report (every source x language x task): {loaded.report_dir}/mixture.md (+ .json, .png)")


def chain_table(results: Dict[str, object], cfg: DictConfig) -> Dict[str, Dict[str, object]]:
    """Per language across the chain: each reward stage's held-out accuracy and the held-out language
    fidelity of every policy measured (`language_fidelity:<policy>` columns of the stages' tables), plus a
    `mean` row (each language counts once)."""
    table: Dict[str, Dict[str, object]] = {}
    for name, result in results.items():
        for lang, row in result.languages.items():
            out = table.setdefault(lang, {})
            if cfg.stages[name].kind == "reward" and "reward_accuracy" in row:
                out[f"{name} accuracy"] = row["reward_accuracy"]
            for key, value in row.items():
                if key.startswith("language_fidelity:"):
                    # A policy measured by two stages (e.g. sft by dpo and rl): same prompts, settings and seed.
                    out.setdefault(f"fidelity {key.split(':', 1)[1]}", value)
    table = {lang: row for lang, row in table.items() if row}  # e.g. an `all` row of another stage's table
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    if not any(c.startswith("fidelity ") or c.endswith(" accuracy") for c in columns):
        return {}
    means = {}
    for c in columns:
        values = [row[c] for row in table.values() if isinstance(row.get(c), (int, float))]
        means[c] = sum(values) / len(values) if values else None
    return {**dict(sorted(table.items())), "mean": means}


def print_languages(results: Dict[str, object], cfg: Optional[DictConfig] = None,
                    out_path: Optional[Path] = None) -> None:
    """One table per stage: its per-language summary (rows, tokens, first and last eval loss, ...); then,
    for a preference chain, one table across stages (written to `out_path` as JSON too)."""
    for name, result in results.items():
        rows = result.languages
        if not rows:
            continue
        columns = list(next(iter(rows.values())).keys())
        table = Table(title=f"stage {name}: per language")
        table.add_column("language")
        for column in columns:
            table.add_column(column, justify="right")
        for lang, values in rows.items():
            table.add_row(lang, *(_fmt(values.get(c)) for c in columns))
        console.print(table)
    chain = chain_table(results, cfg) if cfg is not None else {}
    if not chain:
        return
    columns = list(dict.fromkeys(c for row in chain.values() for c in row))
    table = Table(title="per language across the chain (held-out prompts and pairs)")
    table.add_column("language")
    for column in columns:
        table.add_column(column, justify="right")
    for lang, values in chain.items():
        if lang == "mean":
            table.add_section()
        table.add_row(lang, *(_fmt(values.get(c)) for c in columns))
    console.print(table)
    if out_path is not None:
        from aya_train.artifacts import atomic_write_json

        atomic_write_json(out_path, chain)


ACTION_STYLE = {"reuse": "green", "resume": "yellow", "run": "cyan", "skip": "dim", "refuse": "bold red"}


def print_stage_plan(cfg: DictConfig, run_dir, plans) -> None:
    """What the pipeline will do with each stage (reuse / resume / run / skip / refuse) and why."""
    from aya_train.pipeline import _upstream

    table = Table(title=f"run {cfg.run.name}: plan ({run_dir.root})")
    for column in ("stage", "kind", "reads", "data", "action", "why"):
        table.add_column(column)
    for plan in plans:
        reads = ", ".join(_upstream(cfg, plan.name)) or "-"
        data = OmegaConf.select(cfg.stages[plan.name], "data", default=None) or "-"
        style = ACTION_STYLE.get(plan.action, "")
        table.add_row(plan.name, plan.kind, reads, data, f"[{style}]{plan.action}[/]" if style else plan.action,
                      plan.reason)
    console.print(table)


# ---- run-level report.md: one section per stage, with its per-language table and plots ----

def _md_table(rows: Dict[str, Dict[str, object]], first: str = "language") -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(c for values in rows.values() for c in values))
    lines = ["| " + " | ".join([first, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for key, values in rows.items():
        lines.append("| " + " | ".join([str(key), *(_fmt(values.get(c)) for c in columns)]) + " |")
    return "\n".join(lines)


# Plotted first when a stage logs them (at most `max_plots` per stage).
_PLOT_FIRST = ("loss", "reward_accuracy", "reward_margin", "reward_mean", "language_fidelity", "win_rate",
               "mean_token_accuracy")


def plot_eval_metrics(metrics_path, out_dir, max_plots: int = 4) -> List:
    """One PNG per metric logged per language (`<split>/<metric>/<lang>` over the steps, split eval or rl),
    the informative ones first; returns their paths."""
    from pathlib import Path

    from aya_train.metrics.per_language import read_metrics

    series: Dict[str, Dict[str, List[tuple]]] = {}
    for record in read_metrics(Path(metrics_path)):
        for key, value in record.items():
            parts = key.split("/")
            if (len(parts) == 3 and parts[0] in ("eval", "rl") and not parts[2].startswith("task:")
                    and isinstance(value, (int, float))):
                series.setdefault(f"{parts[0]}/{parts[1]}", {}).setdefault(parts[2], []).append((record["step"], value))
    series = {metric: langs for metric, langs in series.items() if any(len(points) > 1 for points in langs.values())}
    if not series:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rank(metric: str) -> tuple:
        name = metric.split("/", 1)[1]
        return (_PLOT_FIRST.index(name) if name in _PLOT_FIRST else len(_PLOT_FIRST), metric)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in sorted(series, key=rank)[:max_plots]:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for lang, points in sorted(series[metric].items()):
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker=".", linewidth=1, label=lang)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per language")
        ax.legend(fontsize=6, ncol=max(1, len(series[metric]) // 12), loc="best")
        fig.tight_layout()
        path = out_dir / f"{metric.replace('/', '_')}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(path)
        paths.append(path)
    return paths


def write_run_report(cfg: DictConfig, run_dir) -> None:
    """`<run>/report.md`: every stage's status, lineage and summary, its per-language table and plots."""
    from aya_train.artifacts import atomic_write_text, read_json
    from aya_train.pipeline import stage_reads

    manifest = run_dir.load_manifest()
    lines = [f"# Run `{cfg.run.name}`", "",
             f"aya-train {manifest.get('version')} (commit {manifest.get('git_commit') or 'unknown'}); "
             f"resolved config in `config.yaml`, lineage in `manifest.json`.", "",
             "| stage | kind | status | reads | data | fingerprint |", "|---|---|---|---|---|---|"]
    for name, node in cfg.stages.items():
        entry = manifest["stages"].get(name, {})
        reads = ", ".join(f"{k}={v}" for k, v in stage_reads(node).items()) or "-"
        lines.append(f"| {name} | {node.kind} | {entry.get('status', 'not run')} | {reads} | "
                     f"{entry.get('data') or '-'} | {entry.get('fingerprint', '-')} |")
    for name, node in cfg.stages.items():
        entry = manifest["stages"].get(name)
        if not entry:
            continue
        stage_dir = run_dir.stage_dir(name)
        lines += ["", f"## Stage `{name}` ({node.kind})", "", f"Status: {entry.get('status')}."]
        if entry.get("data_fingerprint"):
            lines.append(f"Data set `{entry.get('data')}`, content fingerprint `{entry['data_fingerprint'][:16]}`.")
        if entry.get("resumed_from"):
            lines.append(f"Resumed from `{entry['resumed_from']}` after an interruption.")
        summary = entry.get("summary") or {}
        if summary:
            lines.append("Summary: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in summary.items()) + ".")
        table = _md_table(read_json(stage_dir / "languages.json", default={}) or {})
        if table:
            lines += ["", "### Per language", "", table]
        plots = plot_eval_metrics(stage_dir / "metrics.jsonl", stage_dir / "plots") if entry.get("status") == "done" else []
        for path in plots + sorted(stage_dir.glob("*.png")):  # + charts a stage draws itself (evaluate's win-rates)
            lines += ["", f"![{path.stem}]({path.relative_to(run_dir.root).as_posix()})"]
    atomic_write_text(run_dir.root / "report.md", "\n".join(lines) + "\n")
