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
                      node.data or "-", "done" if done else "to run")
    console.print(graph)
    for ds_name in dict.fromkeys(node.data for node in cfg.stages.values() if node.data):
        loaded = data(ds_name)
        table = Table(title=f"data set `{ds_name}` (fingerprint {loaded.fingerprint})")
        for column in ("language", "task", "train rows", "eval rows"):
            table.add_column(column, justify="right" if "rows" in column else "left")
        train = Counter(zip(loaded.train["language"], loaded.train["task"]))
        held = Counter(zip(loaded.eval["language"], loaded.eval["task"]))
        for lang, task in sorted(set(train) | set(held)):
            table.add_row(lang, task, str(train[(lang, task)]), str(held[(lang, task)]))
        table.add_section()
        table.add_row("all", f"{len(set(loaded.train['language']))} languages", str(len(loaded.train)), str(len(loaded.eval)))
        console.print(table)


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
