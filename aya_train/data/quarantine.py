"""Bad rows: stop at the first (`on_error: raise`) or keep a full account of each (`on_error: skip`).

skip writes one JSON line per bad row to `<run>/data/<set>/quarantine.jsonl`::

    {"file": "data/chat.jsonl", "line": 3, "row": null, "location": "data/chat.jsonl:3",
     "category": "invalid JSON", "reason": "invalid JSON: Expecting value (column 1)", "raw": "{oops"}

`line` counts from 1 (jsonl, as editors do); `row` from 0 (json/parquet/csv/datasets, as Python does).
Counts per category (and per language where the row has one) go into the data report.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Optional

from aya_train.data.schema import DataError

RAISE, SKIP = "raise", "skip"
ON_ERROR = (RAISE, SKIP)
QUARANTINE_FILE = "quarantine.jsonl"
_LINE = re.compile(r"^(?P<file>.*):(?P<line>\d+)$")
_ROW = re.compile(r"^(?P<file>.*?)(\[(?P<split>[^\]]+)\])?\[(?:row|conversation) (?P<row>\d+)\]$")


def split_location(location: str) -> Dict[str, Any]:
    """{"file", "line", "row"} from "path:LINE" or "path[row N]" (the parts that do not apply are None)."""
    match = _LINE.match(location)
    if match:
        return {"file": match["file"], "line": int(match["line"]), "row": None}
    match = _ROW.match(location)
    if match:
        return {"file": match["file"], "line": None, "row": int(match["row"])}
    return {"file": location, "line": None, "row": None}


class Quarantine:
    """Where bad rows go. In raise mode `add` raises DataError; in skip mode it records and counts the row."""

    def __init__(self, on_error: str = RAISE, path: Optional[Path] = None, keep_entries: bool = True) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.on_error, self.path, self.keep_entries = on_error, path, keep_entries
        self.counts: Counter = Counter()  # category -> rows
        self.by_language: Dict[str, Counter] = {}  # category -> language -> rows
        self._entries: list = []
        # Entries kept in memory when there is no file to write (library use, tests; not on other ranks).
        self.entries: list = []
        if path is not None and on_error == SKIP:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")  # a fresh account for this load

    def add(self, location: str, category: str, reason: str, raw: Any, language: Optional[str] = None,
            hint: Optional[str] = None) -> None:
        if self.on_error == RAISE:
            raise DataError(location, reason, hint=hint, category=category)
        self.counts[category] += 1
        if language:
            self.by_language.setdefault(category, Counter())[language] += 1
        entry = {**split_location(location), "location": location, "category": category, "reason": reason,
                 "raw": raw}
        if language:
            entry["language"] = language
        self._entries.append(json.dumps(entry, ensure_ascii=False, default=str))
        if len(self._entries) >= 1000:
            self.flush()

    def flush(self) -> None:
        if self.path is None:
            if self.keep_entries:
                self.entries.extend(json.loads(e) for e in self._entries)
        elif self._entries:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(self._entries) + "\n")
        self._entries = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready counts for the data report."""
        self.flush()
        return {"on_error": self.on_error, "file": str(self.path) if self.path and self.total else None,
                "total": self.total, "by_reason": dict(sorted(self.counts.items())),
                "by_reason_and_language": {k: dict(sorted(v.items())) for k, v in sorted(self.by_language.items())}}
