"""Collect canonical records into Arrow chunks: tokenised, length-checked and id-deduplicated per chunk, so
that only one chunk of records is ever held as Python objects (the labels are kept per row)."""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, Dict, List, Sequence

import numpy as np
import pyarrow as pa

from aya_train.data.quarantine import Quarantine
from aya_train.data.schema import OVER_LENGTH
from aya_train.data.tokens import LENGTH_FIELDS, TokenStats, token_stats

Record = Dict[str, Any]
OVER_LENGTH_POLICIES = ("truncate", "drop")


class Collector:
    """Canonical records in Arrow chunks of CHUNK rows: tokenised, length-checked and id-deduplicated per
    chunk, so only one chunk of records is ever held as Python objects (the labels are kept per row)."""

    CHUNK = 4096
    # Keeps token statistics across runs (load_data's `stats_cache`); None measures every time.
    stats_cache: Any = None

    def __init__(self, kind, tokenizer, max_length, over_length, quarantine, adjusted, keep: Sequence[str] = ()):
        if over_length not in OVER_LENGTH_POLICIES:
            raise ValueError(f"over_length must be one of {', '.join(OVER_LENGTH_POLICIES)}, got {over_length!r}")
        self.kind, self.tokenizer, self.max_length, self.policy = kind, tokenizer, max_length, over_length
        self.measure = partial(token_stats, keep=tuple(keep))  # token columns kept for the SFT stage, if any
        self.quarantine, self.adjusted = quarantine, adjusted
        from aya_train.data.loading import FEATURES

        self.schema = FEATURES[kind].arrow_schema
        self.chunks: List[Any] = []
        self.stats: List[TokenStats] = []
        self.languages: List[str] = []
        self.tasks: List[str] = []
        self.keys: List[str] = []  # split keys: the id before any #N suffix, so identical rows share a side
        self.seen: Counter = Counter()
        self.over: Counter = Counter()
        self.inferred = 0
        self.inferred_rows: Counter = Counter()  # language -> rows identified from the text
        self.confidence: Counter = Counter()  # language -> sum of their identification confidences
        self.batch: List[Record] = []
        self.locations: List[str] = []

    def add(self, record: Record, location: str) -> None:
        self.batch.append(record)
        self.locations.append(location)
        if len(self.batch) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        batch, locations = self.batch, self.locations
        self.batch, self.locations = [], []
        if not batch:
            return
        if self.tokenizer is not None:
            stats = (self.stats_cache(batch, self.kind, self.tokenizer, self.measure) if self.stats_cache
                     else self.measure(batch, self.kind, self.tokenizer))
            if self.max_length:
                batch, locations, stats, over = _over_length(batch, locations, stats, self.max_length, self.policy,
                                                             self.quarantine)
                self.over.update(over)
            self.stats.append(stats)
        for record in batch:
            self.keys.append(record["id"])
            self.seen[record["id"]] += 1
            if self.seen[record["id"]] > 1:  # identical conversation (or row id) again: kept, id made unique
                record["id"] = f"{record['id']}#{self.seen[record['id']]}"
                self.adjusted["repeated conversation or row id; kept, id suffixed #N"] += 1
            self.languages.append(record["language"])
            self.tasks.append(record["task"])
            if record["language_inferred"]:
                self.inferred += 1
                self.inferred_rows[record["language"]] += 1
                self.confidence[record["language"]] += record["language_confidence"]
        self.chunks.append(pa.Table.from_pylist(batch, schema=self.schema))

    def finish(self):
        """(Arrow table of every record, TokenStats or None)."""
        self._flush()
        table = pa.concat_tables(self.chunks) if self.chunks else self.schema.empty_table()
        if self.tokenizer is None:
            return table, None
        if not self.stats:
            return table, TokenStats(*(np.zeros(0, np.int64) for _ in LENGTH_FIELDS))
        # token columns only when every chunk kept them (a chunk read back from the statistics cache has none)
        encoded = [s.encoded for s in self.stats]
        encoded = pa.concat_tables(encoded) if all(e is not None for e in encoded) else None
        return table, TokenStats(*(np.concatenate([getattr(s, f) for s in self.stats]) for f in LENGTH_FIELDS),
                                 encoded=encoded)


def _over_length(records, locations, stats: TokenStats, max_length: int, policy: str, quarantine: Quarantine):
    """Count rows longer than max_length per language; with policy `drop`, quarantine them (or raise)."""
    if policy not in OVER_LENGTH_POLICIES:
        raise ValueError(f"over_length must be one of {', '.join(OVER_LENGTH_POLICIES)}, got {policy!r}")
    over = Counter()
    keep = np.ones(len(records), dtype=bool)
    for i in np.flatnonzero(stats.longest > max_length):
        record = records[i]
        over[record["language"]] += 1
        if policy == "drop":
            quarantine.add(locations[i], OVER_LENGTH,
                           f"{int(stats.longest[i])} tokens after the chat template, over max_length {max_length}",
                           record, language=record["language"],
                           hint="raise the stage's max_length, shorten the row, or set over_length: truncate")
            keep[i] = False
    if keep.all():
        return records, locations, stats, over
    kept = np.flatnonzero(keep)
    stats = stats.take(kept)
    return [records[i] for i in kept], [locations[i] for i in kept], stats, over
