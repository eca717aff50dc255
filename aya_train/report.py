"""What the terminal shows: the stage graph and data summary of a dry run, and the per-language table."""

from __future__ import annotations

from collections import Counter
from typing import Dict

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

console = Console()


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_plan(cfg: DictConfig, run_dir, data) -> None:
    """Stage graph and rows per language and task for every data set a stage uses; trains nothing."""
    from aya_train.pipeline import _upstream

    graph = Table(title=f"run {cfg.run.name} -> {run_dir.root}")
    for column in ("stage", "kind", "reads", "data", "status"):
        graph.add_column(column)
    for name, node in cfg.stages.items():
        done = run_dir.done_info(name)
        graph.add_row(name, node.kind, ", ".join(_upstream(cfg, name)) or cfg.model.name_or_path,
                      node.get("data") or "-", "done" if done else "to run")
    console.print(graph)
    for ds_name in dict.fromkeys(node.get("data") for node in cfg.stages.values() if node.get("data")):
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
        print_mixture(ds_name, loaded)


def print_mixture(name: str, loaded) -> None:
    """The mixture plan of a data set per language (the full source x language x task table is in the report)."""
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


def print_languages(results: Dict[str, object]) -> None:
    """One table per stage: its per-language summary (rows, tokens, first and last eval loss, ...)."""
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
