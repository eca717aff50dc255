"""Load a data set's sources into canonical records (conversations or preference pairs), account for every
bad row, measure token lengths, split per language, summarise and fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, List as ListFeature, Value

from aya_train.config import DataSetConfig, SourceConfig
from aya_train.data.collect import OVER_LENGTH_POLICIES, Collector
from aya_train.data.languages import UnknownLanguageError, normalize_language
from aya_train.data.presets import format_kind, get_preset
from aya_train.data.quarantine import RAISE, Quarantine
from aya_train.data.readers import BadRow, iter_rows, source_name
from aya_train.data.records import RowContext, record_builder
from aya_train.data.schema import (
    CONVERSATION, CONVERSATION_FIELDS, KINDS, PREFERENCE, PREFERENCE_FIELDS, ExcludedRow, RowError,
)
from aya_train.data.tokens import fertility

DEMO_CORPUS = "pkg://chatterbot_corpus/data"

_MESSAGES = ListFeature({"role": Value("string"), "content": Value("string")})
_LABELS = {"language": Value("string"), "task": Value("string"), "source": Value("string"), "id": Value("string"),
           "language_inferred": Value("bool"), "language_confidence": Value("float32")}
CONVERSATION_FEATURES = Features({"messages": _MESSAGES, **_LABELS})
PREFERENCE_FEATURES = Features({"prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES, **_LABELS})
FEATURES = {CONVERSATION: CONVERSATION_FEATURES, PREFERENCE: PREFERENCE_FEATURES}
# schema.py names the columns; keep them in step
assert tuple(CONVERSATION_FEATURES) == CONVERSATION_FIELDS and tuple(PREFERENCE_FEATURES) == PREFERENCE_FIELDS
LANGUAGE_MISMATCH_POLICIES = ("warn", "drop", "ignore")


@dataclass
class DataSummary:
    """Rows per language and task in each split, and every row left out, quarantined or changed, by reason."""

    train: Dict[str, Dict[str, int]] = field(default_factory=dict)  # language -> task -> rows
    eval: Dict[str, Dict[str, int]] = field(default_factory=dict)
    excluded: Dict[str, int] = field(default_factory=dict)  # reason -> rows not loaded (by design, e.g. hinglish)
    adjusted: Dict[str, int] = field(default_factory=dict)  # change made -> rows loaded after that change
    language_inferred: int = 0  # rows whose language was identified from the text
    # language -> {"rows": identified rows, "mean_confidence": their mean identification confidence}
    inferred_by_language: Dict[str, Dict[str, float]] = field(default_factory=dict)
    kind: str = CONVERSATION
    # Bad rows (on_error: skip): total, per reason, per reason and language, and the quarantine file.
    quarantined: Dict[str, Any] = field(default_factory=dict)
    # Token accounting when a tokenizer was given: the length limit, rows over it per language, fertility.
    max_length: Optional[int] = None
    over_length: Dict[str, int] = field(default_factory=dict)  # language -> rows longer than max_length
    rows_by_language: Dict[str, int] = field(default_factory=dict)  # language -> rows kept (train + eval)
    fertility: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form for manifests and reports."""
        return {"kind": self.kind, "train": self.train, "eval": self.eval, "excluded": self.excluded,
                "adjusted": self.adjusted, "language_inferred": self.language_inferred,
                "inferred_by_language": self.inferred_by_language, "quarantined": self.quarantined, "max_length": self.max_length, "over_length": self.over_length,
                "rows_by_language": self.rows_by_language, "fertility": self.fertility}


@dataclass
class LoadedData:
    """Canonical records split into train and eval, with their summary.

    `available` is the train split as read; `train` is what the stage trains on (the mixture plan's rows of
    `available`, repeats included; the same object when no plan was applied). With a tokenizer,
    `train_tokens[i]` is the token length of `train[i]` and `available_tokens[i]` that of `available[i]`;
    the `*_encoded` tables, when the loader was asked to keep token columns and tokenised every row itself
    (none was read from the statistics cache), hold row i's `input_ids` (and `assistant_masks`) likewise.
    """

    train: Dataset
    eval: Dataset
    summary: DataSummary
    kind: str = CONVERSATION
    train_tokens: Optional[np.ndarray] = None
    available: Optional[Dataset] = None
    available_tokens: Optional[np.ndarray] = None
    train_encoded: Optional[pa.Table] = None
    eval_encoded: Optional[pa.Table] = None
    available_encoded: Optional[pa.Table] = None
    plan: Any = None  # aya_train.data.mixture.MixturePlan once a mixture was applied
    report_dir: Any = None  # where the data report was written (run directory only)

    def __post_init__(self) -> None:
        if self.available is None:
            self.available, self.available_tokens = self.train, self.train_tokens
            self.available_encoded = self.train_encoded

    @cached_property
    def fingerprint(self) -> str:
        """Stable content hash of train + eval, for lineage (computed on first use)."""
        return fingerprint(self.train, self.eval)


def data_set_kind(ds: DataSetConfig) -> str:
    """The set's `kind`, or the kind its sources' formats imply (conversation when they imply none)."""
    implied = {format_kind(src.format) for src in ds.sources} - {None}
    kind = getattr(ds, "kind", None)
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        clash = implied - {kind}
        if clash:
            raise ValueError(f"kind is {kind!r} but a source's format is a {clash.pop()} layout; "
                             "fix `kind` or the source's `format`")
        return kind
    if len(implied) > 1:
        raise ValueError("sources mix conversation and preference formats; a data set holds one kind of record")
    return implied.pop() if implied else CONVERSATION


def load_conversations(ds: DataSetConfig, seed: int, **kwargs: Any) -> LoadedData:
    """Kept for callers that load conversation sets; same as `load_data`."""
    return load_data(ds, seed, **kwargs)


def load_data(ds: DataSetConfig, seed: int, tokenizer: Any = None, max_length: Optional[int] = None,
              quarantine: Optional[Quarantine] = None, stats_cache: Any = None, keep: Sequence[str] = ()) -> LoadedData:
    """Read every source of `ds` into canonical records and split each language into train/eval.

    Bad rows go to `quarantine` (default: raise at the first). With a tokenizer, every row's templated
    length is measured; rows longer than `max_length` are counted per language and, with
    `over_length: drop`, handed to the quarantine. `stats_cache` (aya_train.stages.prep_cache.TokenStatsCache)
    keeps those measurements, so that a rerun does not tokenise again. `keep` names token columns of
    conversation rows to keep for the trainer (aya_train.data.tokens), so that it does not tokenise again either.
    """
    if not ds.sources:
        raise ValueError("data set has no `sources`; add at least one {path: ..., format: ...}")
    if not 0.0 <= ds.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {ds.eval_fraction}")
    kind = data_set_kind(ds)
    on_error = getattr(ds, "on_error", RAISE)
    quarantine = quarantine or Quarantine(on_error)
    build = record_builder(kind)
    excluded: Counter = Counter()
    adjusted: Counter = Counter()
    rows = Collector(kind, tokenizer, max_length, getattr(ds, "over_length", "truncate"), quarantine, adjusted, keep)
    rows.stats_cache = stats_cache
    keep_languages = {normalize_language(lang) for lang in ds.languages} if getattr(ds, "languages", None) else None
    for src in ds.sources:
        preset = get_preset(src.format, kind)
        ctx = RowContext(source=source_name(src), name_given=bool(src.name), language=_source_language(src),
                         task=src.task, strict=quarantine.on_error == RAISE,
                         language_mismatch=getattr(ds, "language_mismatch", "warn"))
        for location, row in iter_rows(src):
            if isinstance(row, BadRow):
                quarantine.add(location, row.category, row.reason, row.raw)
                continue
            try:
                record, notes = build(row, preset, ctx)
            except ExcludedRow as e:
                excluded[str(e)] += 1
                continue
            except RowError as e:
                quarantine.add(location, e.category, str(e), dict(row))
                continue
            if keep_languages is not None and record["language"] not in keep_languages:
                excluded["language not in the data set's `languages`"] += 1
                continue
            adjusted.update(notes)
            rows.add(record, location)
    table, stats = rows.finish()
    held = np.zeros(table.num_rows, dtype=bool)
    held[sorted(split_by_language(rows.languages, rows.keys, ds.eval_fraction, ds.max_eval_rows_per_language,
                                  seed))] = True
    train_idx, eval_idx = np.flatnonzero(~held), np.flatnonzero(held)
    labels = list(zip(rows.languages, rows.tasks))
    summary = DataSummary(
        train=_counts([labels[i] for i in train_idx]), eval=_counts([labels[i] for i in eval_idx]),
        excluded=dict(sorted(excluded.items())), adjusted=dict(sorted(adjusted.items())),
        language_inferred=rows.inferred, kind=kind,
        inferred_by_language={lang: {"rows": n, "mean_confidence": rows.confidence[lang] / n}
                              for lang, n in sorted(rows.inferred_rows.items())}, quarantined=quarantine.to_dict(),
        max_length=max_length if stats is not None else None, over_length=dict(sorted(rows.over.items())),
        rows_by_language=dict(sorted(Counter(rows.languages).items())),
        fertility=fertility(rows.languages, stats) if stats is not None else {},
    )
    train_stats = eval_stats = None
    if stats is not None:
        train_stats, eval_stats = stats.take(train_idx), stats.take(eval_idx)
    return LoadedData(_dataset(table.take(train_idx), kind), _dataset(table.take(eval_idx), kind), summary,
                      kind=kind, train_tokens=None if train_stats is None else train_stats.tokens,
                      train_encoded=None if train_stats is None else train_stats.encoded,
                      eval_encoded=None if eval_stats is None else eval_stats.encoded)


def _source_language(src: SourceConfig) -> Optional[str]:
    if not src.language:
        return None
    try:
        return normalize_language(src.language)
    except UnknownLanguageError as e:
        raise UnknownLanguageError(f"source {src.path}: `language`: {e}") from None


def split_by_language(languages: Sequence[str], keys: Sequence[str], eval_fraction: float,
                      max_eval_rows: Optional[int], seed: int) -> Set[int]:
    """Indices held out for eval: per language, rows ordered by sha256(seed, key), the first k taken."""
    by_language: Dict[str, List[int]] = defaultdict(list)
    for index, language in enumerate(languages):
        by_language[language].append(index)
    held_out: Set[int] = set()
    for indices in by_language.values():
        n = len(indices)
        if n < 2 or eval_fraction <= 0:
            continue
        # round half up (not Python's banker's rounding) so the count is easy to predict by hand;
        # at most n - 1 so every language keeps a training row.
        k = min(max(1, int(eval_fraction * n + 0.5)), n - 1)
        if max_eval_rows is not None:
            k = min(k, max_eval_rows)
        ordered = sorted(indices, key=lambda i: (hashlib.sha256(f"{seed}:{keys[i]}".encode("utf-8")).hexdigest(), i))
        held_out.update(ordered[:k])
    return held_out


def _counts(labels: List[Tuple[str, str]]) -> Dict[str, Dict[str, int]]:
    """language -> task -> rows, from (language, task) pairs."""
    counts: Dict[str, Counter] = defaultdict(Counter)
    for language, task in labels:
        counts[language][task] += 1
    return {lang: dict(sorted(tasks.items())) for lang, tasks in sorted(counts.items())}


def _dataset(table: Any, kind: str) -> Dataset:
    from datasets import DatasetInfo
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(table), info=DatasetInfo(features=FEATURES[kind]))


def fingerprint(*datasets: Dataset) -> str:
    """sha256 over the rows as canonical JSON; unlike `Dataset._fingerprint`, equal across runs and machines."""
    digest = hashlib.sha256()
    for dataset in datasets:
        digest.update(b"\x1e")  # separates the datasets, so rows moving between train and eval change it
        for batch in dataset.iter(batch_size=1024):
            for i in range(len(next(iter(batch.values()), []))):
                row = {name: values[i] for name, values in batch.items()}
                line = json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
                digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def demo_corpus_texts() -> List[str]:
    """Every turn of the installed chatterbot corpus, in file and conversation order (tokenizer training text)."""
    texts: List[str] = []
    for _, row in iter_rows(SourceConfig(path=DEMO_CORPUS, format="chatterbot")):
        if isinstance(row, BadRow):
            continue
        turns = row["turns"] if isinstance(row["turns"], list) else [row["turns"]]
        texts.extend(t for t in turns if isinstance(t, str) and t.strip())
    return texts
