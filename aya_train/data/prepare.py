"""A run's view of one data set: load it with the model's tokenizer, quarantine bad rows, apply the mixture
plan, write the data report into the run directory and record it in manifest.json.

Every rank computes the same result (seeded, no rank-dependent state); only the main process writes files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from aya_train.data.loading import LoadedData, load_data
from aya_train.data.quarantine import QUARANTINE_FILE, SKIP, Quarantine
from aya_train.data.schema import DataError

log = logging.getLogger("aya_train")


def mixture_report_dir(run_root: Path, name: str) -> Path:
    """`<run>/data/<set name>/`: the data report (mixture.json/.md/.png) and quarantine.jsonl of a data set."""
    return Path(run_root) / "data" / name


def stages_max_length(cfg: Any, name: str) -> Optional[int]:
    """The shortest max_length among the stages that read data set `name` (None when no stage does)."""
    lengths = [node.max_length for node in cfg.stages.values()
               if node.get("data") == name and node.get("max_length")]
    return min(lengths) if lengths else None


def kept_token_columns(cfg: Any, name: str) -> Tuple[str, ...]:
    """The token columns trl's SFTTrainer would compute for the SFT stages reading data set `name` (input_ids,
    and assistant_masks under assistant_only_loss): the loader keeps what it tokenises so trl need not again."""
    from aya_train.data.tokens import ASSISTANT_MASKS, INPUT_IDS

    sft = [node for node in cfg.stages.values() if node.get("data") == name and node.kind == "sft"]
    if not sft:
        return ()
    return (INPUT_IDS, ASSISTANT_MASKS) if any(node.assistant_only_loss for node in sft) else (INPUT_IDS,)


def needs_tokens(ds: Any) -> bool:
    return ds.mixture.unit == "tokens"


def prepare_data_set(cfg: Any, name: str, run_root: Path, is_main: bool,
                     tokenizer: Callable[[], Any]) -> LoadedData:
    """Load data set `name` of the run config `cfg`, mixed and reported. `tokenizer()` returns the model's
    tokenizer or None when it cannot be loaded (token counts are then left out)."""
    from aya_train.data.mixture import MixtureError, apply_mixture
    from aya_train.stages.prep_cache import TokenStatsCache, cache_root
    from aya_train.data.mixture_report import record_in_manifest, write_report

    ds = cfg.data[name]
    out = mixture_report_dir(run_root, name)
    path = out / QUARANTINE_FILE if is_main and ds.on_error == SKIP else None
    quarantine = Quarantine(ds.on_error, path, keep_entries=is_main)  # other ranks only count
    tok = tokenizer()
    if tok is None and needs_tokens(ds):
        raise DataError(f"data.{name}.mixture.unit", "is tokens, but the model's tokenizer could not be loaded "
                        "(see the warning above)", hint="make model.name_or_path loadable, or use unit: examples")
    data = load_data(ds, seed=cfg.run.seed, tokenizer=tok, max_length=stages_max_length(cfg, name),
                     quarantine=quarantine, stats_cache=TokenStatsCache(cache_root(cfg.run)),
                     keep=kept_token_columns(cfg, name))
    try:
        apply_mixture(data, ds.mixture, seed=cfg.run.seed)
    except MixtureError as exc:  # settings that do not fit this data (e.g. a share for an absent language)
        raise DataError(f"data.{name}", str(exc).replace("mixture.", f"data.{name}.mixture.", 1),
                        hint="fix the mixture settings; the names are those of the rows (canonical codes)") from None
    if quarantine.total:
        log.warning("data set %s: %d bad row(s) quarantined in %s (%s)", name, quarantine.total, path or "memory",
                    ", ".join(f"{k}: {v}" for k, v in quarantine.counts.items()))
    if is_main:
        from aya_train.report import print_mixture

        data.report_dir = out
        files = write_report(data, name, out)
        record_in_manifest(run_root, name, data, files)
        print_mixture(name, data)
    if data.available.num_rows == 0:
        where = f"; the bad rows are in {path}" if quarantine.total and path else ""
        raise DataError(f"data.{name}", f"no training rows left ({quarantine.total} bad, "
                        f"{sum(data.summary.excluded.values())} left out by design){where}",
                        hint="fix the sources or their `format`; the data report lists every reason")
    return data


def check_data_set(name: str, ds: Any) -> None:
    """Config checks of data set `name` that read no rows; raises ValueError naming the key and the fix."""
    from aya_train.data.loading import LANGUAGE_MISMATCH_POLICIES, OVER_LENGTH_POLICIES, data_set_kind
    from aya_train.data.languages import UnknownLanguageError, normalize_language
    from aya_train.data.mixture import check_mixture
    from aya_train.data.quarantine import ON_ERROR

    for key, allowed in (("on_error", ON_ERROR), ("over_length", OVER_LENGTH_POLICIES),
                         ("language_mismatch", LANGUAGE_MISMATCH_POLICIES)):
        if ds[key] not in allowed:
            raise ValueError(f"data.{name}.{key}: `{ds[key]}` is not one of {', '.join(allowed)}.")
    try:
        data_set_kind(ds)
    except ValueError as exc:
        raise ValueError(f"data.{name}.kind: {exc}.") from None
    check_mixture(ds.mixture, where=f"data.{name}.mixture")
    for lang in ds.get("languages") or []:
        try:
            normalize_language(lang)
        except UnknownLanguageError as exc:
            raise ValueError(f"data.{name}.languages: {exc}") from None
