"""Readers: turn a SourceConfig into (location, raw row) pairs, whatever the storage.

Locations name the row for the person fixing it: `path:LINE` (from 1, as editors count) for jsonl,
`path[row N]` / `path[conversation N]` (from 0, as Python and `datasets` index) for everything else.
A row that cannot even be parsed is yielded as a `BadRow` (the loader raises or quarantines it), so that a
reader never decides what happens to bad input. READERS (format name -> reader) replaces the file readers
for formats that read something other than data files (e.g. the chatterbot corpus).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Tuple, Union

from aya_train.config import SourceConfig
from aya_train.data.languages import normalize_language
from aya_train.data.presets import format_kind, get_preset
from aya_train.data.schema import INVALID_JSON, INVALID_UTF8, NOT_AN_OBJECT, NUL_BYTE, DataError


@dataclass(frozen=True)
class BadRow:
    """A row a reader could not parse: why (category + reason) and the raw text or value."""

    category: str
    reason: str
    raw: Any


Row = Dict[str, Any]
RowOrBad = Union[Row, BadRow]
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
CHATTERBOT_SUFFIXES = (".yml", ".yaml")
PKG_SCHEME = "pkg://"
# owner/name, as on the hub; anything with a data-file suffix is a local path that is missing.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_path(path: str) -> str:
    """Expand `~` and `pkg://<module>/<subdir>` (a folder inside an installed package) to a local path."""
    if not path.startswith(PKG_SCHEME):
        return os.path.expanduser(path)
    module, _, subdir = path[len(PKG_SCHEME):].partition("/")
    try:
        # find_spec locates the package without importing (running) it.
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise FileNotFoundError(f"{path}: no installed Python package named {module!r}; install it or fix the path")
    locations = list(spec.submodule_search_locations or [])
    base = Path(locations[0]) if locations else Path(str(spec.origin)).parent
    return str(base / subdir) if subdir else str(base)


def is_hub_id(path: str) -> bool:
    """True when `path` looks like a hub dataset id (`owner/name`) rather than a local file."""
    return bool(_HUB_ID.match(path)) and not path.lower().endswith(DATA_SUFFIXES + CHATTERBOT_SUFFIXES)


def source_name(src: SourceConfig) -> str:
    """Label of a source in reports: its `name`, else the package, file or folder name."""
    if src.name:
        return str(src.name)
    if src.path.startswith(PKG_SCHEME):
        return src.path[len(PKG_SCHEME):].split("/")[0].split(".")[0]
    local = Path(resolve_path(src.path))
    if local.exists():
        return local.stem if local.is_file() else local.name
    return src.path.rstrip("/").split("/")[-1]  # hub id: the dataset part of owner/name


def check_source(src: SourceConfig) -> None:
    """Cheap pre-flight, reading no rows: the path exists (or is a hub id), the format and language are known."""
    path = resolve_path(src.path)
    if not os.path.exists(path) and not is_hub_id(src.path):
        shown = src.path if path == src.path else f"{src.path} (resolved to {path})"
        raise FileNotFoundError(
            f"data source {shown} does not exist and is not a hub id like 'owner/name'; "
            "fix `path` (file, folder, saved dataset dir, hub id or pkg://<module>/<subdir>)"
        )
    get_preset(src.format, "preference" if format_kind(src.format) == "preference" else "conversation")
    if src.language:
        normalize_language(src.language)


def iter_rows(src: SourceConfig) -> Iterator[Tuple[str, RowOrBad]]:
    """(location, raw row or BadRow) for every row of a file, folder, saved `datasets` dir or hub id, in order."""
    if isinstance(src.format, str) and src.format in READERS:
        yield from READERS[src.format](src)
        return
    yield from _iter_path(src, chatterbot=False)


def read_chatterbot(src: SourceConfig) -> Iterator[Tuple[str, RowOrBad]]:
    """Chatterbot-corpus YAML files (a file or a folder of language folders)."""
    yield from _iter_path(src, chatterbot=True)


def _iter_path(src: SourceConfig, chatterbot: bool) -> Iterator[Tuple[str, RowOrBad]]:
    path = resolve_path(src.path)
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            yield from _iter_saved_dataset(path, src.split)
            return
        for file in _folder_files(path, chatterbot):
            yield from _iter_file(file, chatterbot)
    elif os.path.isfile(path):
        yield from _iter_file(path, chatterbot)
    elif is_hub_id(src.path):
        yield from _iter_hub(src.path, src.split, src.streaming)
    else:
        check_source(src)  # raises the FileNotFoundError that names the path


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json"))


def _folder_files(folder: str, chatterbot: bool) -> List[str]:
    suffixes = CHATTERBOT_SUFFIXES if chatterbot else DATA_SUFFIXES
    root = Path(folder)
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        extra = "" if chatterbot else " (YAML files are read only with format: chatterbot)"
        raise FileNotFoundError(f"folder {folder} has no data files ({', '.join(suffixes)}){extra}")
    return [str(p) for p in files]


def _iter_file(path: str, chatterbot: bool) -> Iterator[Tuple[str, Row]]:
    suffix = Path(path).suffix.lower()
    if suffix in CHATTERBOT_SUFFIXES:
        if not chatterbot:
            raise DataError(path, "YAML files are read as chatterbot-corpus files", hint="set `format: chatterbot`")
        yield from _iter_chatterbot(path)
    elif suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                yield f"{path}[row {i}]", dict(row)
    else:
        raise DataError(path, f"unsupported file type {suffix!r}", hint=f"use one of {', '.join(DATA_SUFFIXES)}")


def _iter_jsonl(path: str) -> Iterator[Tuple[str, Row]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            location = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # decoded per line so the error names the line
                yield location, BadRow(INVALID_UTF8, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                       raw.decode("utf-8", errors="backslashreplace").rstrip("\n"))
                continue
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            if "\x00" in line:
                yield location, BadRow(NUL_BYTE, "line contains a NUL byte", line.rstrip("\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield location, BadRow(INVALID_JSON, f"invalid JSON: {e.msg} (column {e.colno})", line.rstrip("\n"))
                continue
            if not isinstance(row, dict):
                yield location, BadRow(NOT_AN_OBJECT, f"expected one JSON object per line, got {type(row).__name__}",
                                       row)
                continue
            yield location, row


def _iter_json(path: str) -> Iterator[Tuple[str, RowOrBad]]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:  # the whole file is one unit: it is quarantined as one entry
        yield path, BadRow(INVALID_UTF8, f"file is not valid UTF-8 ({e.reason} at byte {e.start})",
                           raw[:2000].decode("utf-8", errors="backslashreplace"))
        return
    except json.JSONDecodeError as e:
        yield f"{path}:{e.lineno}", BadRow(INVALID_JSON, f"invalid JSON: {e.msg} (column {e.colno}); "
                                           "the whole file could not be read", raw[:2000].decode("utf-8", "replace"))
        return
    rows = data.get("data") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DataError(path, "expected a JSON list of objects or {\"data\": [...]}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            yield f"{path}[row {i}]", BadRow(NOT_AN_OBJECT, f"expected a JSON object, got {type(row).__name__}", row)
            continue
        yield f"{path}[row {i}]", row


def _iter_parquet(path: str) -> Iterator[Tuple[str, Row]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}[row {index}]", row
            index += 1


def _iter_rows_of(dataset: Any, prefix: str) -> Iterator[Tuple[str, Row]]:
    for i, row in enumerate(dataset):
        yield f"{prefix}[row {i}]", dict(row)


def _iter_saved_dataset(path: str, split: str) -> Iterator[Tuple[str, Row]]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(path)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(path, f"split {split!r} not found; splits: {', '.join(dataset)}",
                            hint=f"set `split` to one of {', '.join(dataset)}")
        yield from _iter_rows_of(dataset[split], f"{path}[{split}]")
    else:
        yield from _iter_rows_of(dataset, path)


def _iter_hub(hub_id: str, split: str, streaming: bool) -> Iterator[Tuple[str, Row]]:
    from datasets import load_dataset

    # streaming reads the rows as they arrive instead of downloading and caching the whole set first
    yield from _iter_rows_of(load_dataset(hub_id, split=split, streaming=streaming), f"{hub_id}[{split}]")


def _iter_chatterbot(path: str) -> Iterator[Tuple[str, Row]]:
    """Chatterbot-corpus `<language folder>/<category>.yml`: one raw row per conversation."""
    import yaml

    # BaseLoader keeps every scalar as text: a turn "yes" must stay "yes", not become True.
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, list):
        raise DataError(path, "not a chatterbot-corpus file: no `conversations:` list")
    file = Path(path)
    for i, turns in enumerate(conversations):
        yield f"{path}[conversation {i}]", {"turns": turns, "folder": file.parent.name, "category": file.stem}


Reader = Callable[[SourceConfig], Iterator[Tuple[str, RowOrBad]]]
# format name -> reader used instead of the file readers; the preset of the same name maps its rows.
READERS: Dict[str, Reader] = {"chatterbot": read_chatterbot}
