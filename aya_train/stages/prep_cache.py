"""Tokenised data, cached by fingerprint so that a rerun or a later stage never tokenises again.

A trainer's prepared dataset (chat template applied, tokenised, labels built, truncated, packed) depends only on
the rows, the tokenizer, the chat template and the preparation settings (max length, packing, loss masks, ...).
The key is a hash of exactly those; the value is the prepared dataset saved with `datasets` under
`<run.cache_dir>/prepared/<key>/` and read back memory-mapped. The data loader's per-row token counts (data
report, length checks, token budgets) are kept the same way under `<run.cache_dir>/token_stats/`, keyed by the
records' content and the tokenizer. Delete those folders to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
from datasets import Dataset, load_from_disk

_MARKER = "aya_prepared.json"  # written last: a folder without it is an interrupted write


def cache_root(run_cfg: Any) -> Path:
    """`run.cache_dir`, or `<run.output_dir>/.cache` (where the pipeline also keeps the built tiny model)."""
    return Path(run_cfg.cache_dir or Path(run_cfg.output_dir) / ".cache").expanduser().resolve()


def tokenizer_fingerprint(tokenizer: Any, chat_template: Optional[str]) -> str:
    """Hash of everything in a tokenizer that changes token ids: vocabulary, merges, normaliser, special tokens,
    and the chat template the trainer renders conversations with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    payload = json.dumps({
        "class": type(tokenizer).__name__,
        "vocabulary": hashlib.sha256(vocabulary.encode("utf-8")).hexdigest(),
        "special": {str(k): str(v) for k, v in tokenizer.special_tokens_map.items()},
        "chat_template": chat_template or tokenizer.chat_template,
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
    }, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _HashSink:
    """A write-only file that hashes what is written to it."""

    closed = False

    def __init__(self):
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def rows_digest(dataset: Dataset) -> str:
    """sha256 of the rows' Arrow data (Arrow IPC stream): ~100x faster than hashing rows as JSON. The stream
    decodes to the rows, so different rows never share a digest; equal rows built another way (e.g. selected
    rather than written afresh) may get another digest, which costs a cache miss, never a wrong hit."""
    table = dataset.with_format("arrow")[:].replace_schema_metadata(None).combine_chunks()
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        writer.write_table(table)
    return sink.digest.hexdigest()


def prepared_key(dataset: Dataset, tokenizer_fp: str, settings: dict) -> str:
    """Cache key: the rows' content hash + tokenizer/template hash + the preparation settings."""
    payload = {"rows": rows_digest(dataset), "tokenizer": tokenizer_fp, "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


class PreparedDataCache:
    """Folder of prepared datasets by key; writes are atomic, so concurrent writers of one key are harmless."""

    def __init__(self, root: Path, write: bool = True):
        self.root = Path(root) / "prepared"
        # Only one process of a multi-process launch writes; every process reads.
        self.write = write
        self.hits: list[str] = []
        self.misses: list[str] = []

    def folder(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Optional[Dataset]:
        folder = self.folder(key)
        if not (folder / _MARKER).is_file():
            return None
        return load_from_disk(str(folder))

    def get_or_build(self, key: str, build: Callable[[], Dataset], description: str = "") -> Dataset:
        """The cached dataset for `key`, or `build()`'s result saved under `key` (and read back memory-mapped)."""
        cached = self.load(key)
        if cached is not None:
            self.hits.append(key)
            return cached
        self.misses.append(key)
        dataset = build()
        if not self.write:
            return dataset
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            dataset.save_to_disk(str(tmp))
            (tmp / _MARKER).write_text(json.dumps({"key": key, "rows": len(dataset), "what": description}),
                                       encoding="utf-8")
            target = self.folder(key)
            if self.load(key) is not None:
                return self.load(key)  # another process wrote the same key meanwhile: keep theirs
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier write (no marker)
            try:
                os.replace(tmp, target)
            except OSError:
                if self.load(key) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.load(key)

    def read_json(self, key: str, name: str) -> Optional[Any]:
        """A small JSON side result stored next to the prepared dataset `key` (None when absent)."""
        path = self.folder(key) / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_json(self, key: str, name: str, value: Any) -> None:
        if not self.write or not (self.folder(key) / _MARKER).is_file():
            return
        path = self.folder(key) / name
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


class TokenStatsCache:
    """The data loader's token statistics per chunk of records, by content hash (records + tokenizer + chat
    template): a rerun reads them back instead of tokenising every row again. Hashing a chunk's records as JSON
    costs ~1% of tokenising them."""

    def __init__(self, root: Path):
        self.root = Path(root) / "token_stats"
        self._tokenizer_fps: dict = {}
        self.hits = self.misses = 0

    def __call__(self, records: list, kind: str, tokenizer: Any, compute: Callable) -> Any:
        """`compute(records, kind, tokenizer)` (aya_train.data.tokens.token_stats), or its cached result."""
        from aya_train.data.tokens import LENGTH_FIELDS, TokenStats

        tokenizer_fp = self._tokenizer_fps.get(id(tokenizer))
        if tokenizer_fp is None:
            tokenizer_fp = self._tokenizer_fps[id(tokenizer)] = tokenizer_fingerprint(tokenizer, None)
        digest = hashlib.sha256(f"{tokenizer_fp}\x1e{kind}\x1e".encode("utf-8"))
        for record in records:
            digest.update(json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8") + b"\n")
        path = self.root / f"{digest.hexdigest()[:32]}.npz"
        names = LENGTH_FIELDS  # the lengths only: kept token columns are for this run's stage, not for the cache
        if path.is_file():
            with np.load(path) as stored:
                if all(name in stored for name in names):
                    self.hits += 1
                    return TokenStats(**{name: stored[name] for name in names})
        self.misses += 1
        stats = compute(records, kind, tokenizer)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **{name: getattr(stats, name) for name in names})
        os.replace(tmp, path)
        return stats
