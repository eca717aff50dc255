"""Load a data set's sources into canonical conversations, split per language, summarise and fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from datasets import Dataset, Features, List as ListFeature, Value

from aya_train.config import DataSetConfig, SourceConfig
from aya_train.data.languages import UnknownLanguageError, identify_language, normalize_language
from aya_train.data.presets import Preset, get_preset
from aya_train.data.readers import iter_rows, source_name
from aya_train.data.schema import (
    CONVERSATION_FIELDS, DEFAULT_TASK, DataError, ExcludedRow, RowError, check_conversation,
)

Record = Dict[str, Any]
DEMO_CORPUS = "pkg://chatterbot_corpus/data"

CONVERSATION_FEATURES = Features({
    "messages": ListFeature({"role": Value("string"), "content": Value("string")}),
    "language": Value("string"),
    "task": Value("string"),
    "source": Value("string"),
    "id": Value("string"),
    "language_inferred": Value("bool"),
})
assert tuple(CONVERSATION_FEATURES) == CONVERSATION_FIELDS  # schema.py names the columns; keep them in step


@dataclass
class DataSummary:
    """Rows per language and task in each split, and every row left out or changed, by reason."""

    train: Dict[str, Dict[str, int]] = field(default_factory=dict)  # language -> task -> rows
    eval: Dict[str, Dict[str, int]] = field(default_factory=dict)
    excluded: Dict[str, int] = field(default_factory=dict)  # reason -> rows not loaded
    adjusted: Dict[str, int] = field(default_factory=dict)  # change made -> rows loaded after that change
    language_inferred: int = 0  # rows whose language was identified from the text

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form for manifests and reports."""
        return {"train": self.train, "eval": self.eval, "excluded": self.excluded,
                "adjusted": self.adjusted, "language_inferred": self.language_inferred}


@dataclass
class LoadedData:
    """Canonical conversations split into train and eval, with their summary."""

    train: Dataset
    eval: Dataset
    summary: DataSummary

    @cached_property
    def fingerprint(self) -> str:
        """Stable content hash of train + eval, for lineage (computed on first use)."""
        return fingerprint(self.train, self.eval)


def load_conversations(ds: DataSetConfig, seed: int) -> LoadedData:
    """Read every source of `ds` into canonical conversations and split each language into train/eval."""
    if not ds.sources:
        raise ValueError("data set has no `sources`; add at least one {path: ..., format: ...}")
    if not 0.0 <= ds.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {ds.eval_fraction}")
    records: List[Record] = []
    split_keys: List[str] = []  # the id before any #N suffix, so identical rows share a split side
    excluded: Counter = Counter()
    adjusted: Counter = Counter()
    seen_ids: Counter = Counter()
    for src in ds.sources:
        preset = get_preset(src.format)
        default_language = _source_language(src)
        source = source_name(src)
        for location, row in iter_rows(src):
            try:
                record, notes = _to_record(row, preset, src, source, default_language)
            except ExcludedRow as e:
                excluded[str(e)] += 1
                continue
            except (RowError, UnknownLanguageError) as e:
                _bad_row(location, str(e))
                continue
            split_keys.append(record["id"])
            seen_ids[record["id"]] += 1
            if seen_ids[record["id"]] > 1:  # identical conversation (or row id) again: kept, id made unique
                record["id"] = f"{record['id']}#{seen_ids[record['id']]}"
                notes = notes + ("repeated conversation or row id; kept, id suffixed #N",)
            adjusted.update(notes)
            records.append(record)
    held_out = split_by_language([r["language"] for r in records], split_keys, ds.eval_fraction,
                                 ds.max_eval_rows_per_language, seed)
    train_rows = [r for i, r in enumerate(records) if i not in held_out]
    eval_rows = [r for i, r in enumerate(records) if i in held_out]
    summary = DataSummary(
        train=_counts(train_rows), eval=_counts(eval_rows), excluded=dict(sorted(excluded.items())),
        adjusted=dict(sorted(adjusted.items())), language_inferred=sum(r["language_inferred"] for r in records),
    )
    return LoadedData(_to_dataset(train_rows), _to_dataset(eval_rows), summary)


def _bad_row(location: str, reason: str) -> None:
    """The one place a bad row is handled: today it stops the load, naming the row."""
    raise DataError(location, reason)


def _source_language(src: SourceConfig) -> Optional[str]:
    if not src.language:
        return None
    try:
        return normalize_language(src.language)
    except UnknownLanguageError as e:
        raise UnknownLanguageError(f"source {src.path}: `language`: {e}") from None


def _to_record(row: Mapping[str, Any], preset: Preset, src: SourceConfig, source: str,
               default_language: Optional[str]) -> Tuple[Record, Tuple[str, ...]]:
    mapped = preset(row)
    record: Record = {"messages": mapped.messages}
    check_conversation(record)  # before language ID, which needs real text
    inferred = False
    if mapped.language:
        language = normalize_language(mapped.language)
    elif default_language:
        language = default_language
    else:
        text = "\n".join(m["content"] for m in mapped.messages if m["role"] != "system")
        language, inferred = identify_language(text)[0], True
    record.update(
        language=language,
        task=mapped.task or src.task or DEFAULT_TASK,
        source=source,
        id=f"{source}:{mapped.id or _content_hash(mapped.messages)}",
        language_inferred=inferred,
    )
    return record, mapped.notes


def _content_hash(messages: List[Dict[str, str]]) -> str:
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


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


def _counts(rows: List[Record]) -> Dict[str, Dict[str, int]]:
    counts: Dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        counts[row["language"]][row["task"]] += 1
    return {lang: dict(sorted(tasks.items())) for lang, tasks in sorted(counts.items())}


def _to_dataset(rows: List[Record]) -> Dataset:
    columns = {name: [row[name] for row in rows] for name in CONVERSATION_FEATURES}
    return Dataset.from_dict(columns, features=CONVERSATION_FEATURES)


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
        turns = row["turns"] if isinstance(row["turns"], list) else [row["turns"]]
        texts.extend(t for t in turns if isinstance(t, str) and t.strip())
    return texts
