"""One raw row -> one canonical record (conversation or preference), with its language settled.

Language, in order: the row's own label, the source's `language`, offline identification (recorded as
`language_inferred`). A label that names no known language is a bad row in strict mode
(`on_error: raise`); in lenient mode (`skip`) the language is identified from the text and the row is
counted under `unknown language code, identified from the text`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Mapping  # typing.Mapping makes isinstance much slower per row
from typing import Any, Callable, Dict, List, Optional, Tuple

from aya_train.data.languages import UnknownLanguageError, identify_language, normalize_language
from aya_train.data.schema import (
    CHOSEN, DEFAULT_TASK, LANGUAGE_MISMATCH, PREFERENCE, PROMPT, REJECTED, UNKNOWN_LANGUAGE, RowError,
    check_conversation, check_preference,
)

Record = Dict[str, Any]

# Preference rows are flagged as mixed-language only when two parts are each identified with at least this
# confidence from at least this many characters: short answers ("OK", "Nairobi.") identify unreliably.
MISMATCH_MIN_CONFIDENCE = 0.9
MISMATCH_MIN_CHARS = 20
UNKNOWN_CODE_NOTE = "unknown language code, identified from the text"
MISMATCH_NOTE = "prompt/chosen/rejected identified as different languages (kept: language_mismatch=warn)"


@dataclass
class RowContext:
    """What a source contributes to each of its rows."""

    source: str  # source label (SourceConfig.name or the file/folder name)
    name_given: bool  # SourceConfig.name was set (it then wins over a row's own source label)
    language: Optional[str]  # canonical language of the source, or None
    task: Optional[str]
    strict: bool  # on_error == raise
    language_mismatch: str  # warn | drop | ignore (preference sets)


def _content_hash(*parts: Any) -> str:
    canonical = json.dumps(parts if len(parts) > 1 else parts[0], ensure_ascii=False, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _text(messages: List[Dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def _language(label: Optional[str], ctx: RowContext, text: str) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
    """The row's language fields (code, inferred?, confidence) and notes; confidence 1.0 unless identified."""
    if label:
        try:
            return {"language": normalize_language(label), "language_inferred": False, "language_confidence": 1.0}, ()
        except UnknownLanguageError as e:
            if ctx.strict:
                raise RowError(str(e), UNKNOWN_LANGUAGE) from None
            notes: Tuple[str, ...] = (UNKNOWN_CODE_NOTE,)
    elif ctx.language:
        return {"language": ctx.language, "language_inferred": False, "language_confidence": 1.0}, ()
    else:
        notes = ()
    code, confidence = identify_language(text)
    return {"language": code, "language_inferred": True, "language_confidence": float(confidence)}, notes


def _source(mapped_source: Optional[str], ctx: RowContext) -> str:
    return ctx.source if ctx.name_given or not mapped_source else mapped_source


def conversation_record(row: Mapping[str, Any], preset: Callable, ctx: RowContext) -> Tuple[Record, Tuple[str, ...]]:
    mapped = preset(row)
    record: Record = {"messages": mapped.messages}
    check_conversation(record)  # before language ID, which needs real text
    language, notes = _language(mapped.language, ctx, _text(mapped.messages))
    source = _source(getattr(mapped, "source", None), ctx)
    record.update(language,
                  task=mapped.task or ctx.task or DEFAULT_TASK, source=source,
                  id=f"{source}:{mapped.id or _content_hash(mapped.messages)}")
    return record, tuple(mapped.notes) + notes


def _mismatch(parts: Dict[str, str]) -> Optional[str]:
    """'prompt=fr, rejected=en' when confidently identified parts disagree, else None."""
    found = {}
    for name, text in parts.items():
        if len(text.strip()) >= MISMATCH_MIN_CHARS:
            code, confidence = identify_language(text)
            if confidence >= MISMATCH_MIN_CONFIDENCE:
                found[name] = code
    if len(set(found.values())) > 1:
        return ", ".join(f"{k}={v}" for k, v in found.items())
    return None


def preference_record(row: Mapping[str, Any], preset: Callable, ctx: RowContext) -> Tuple[Record, Tuple[str, ...]]:
    mapped = preset(row)
    record: Record = {PROMPT: mapped.prompt, CHOSEN: mapped.chosen, REJECTED: mapped.rejected}
    check_preference(record)
    notes: Tuple[str, ...] = tuple(mapped.notes)
    if ctx.language_mismatch != "ignore":
        found = _mismatch({"prompt": _text(mapped.prompt), "chosen": mapped.chosen[0]["content"],
                           "rejected": mapped.rejected[0]["content"]})
        if found and ctx.language_mismatch == "drop":
            raise RowError(f"prompt, chosen and rejected are in different languages ({found}); "
                           "set language_mismatch: warn to keep such rows", LANGUAGE_MISMATCH)
        if found:
            notes += (MISMATCH_NOTE,)
    language, more = _language(mapped.language, ctx, _text(mapped.prompt + mapped.chosen))
    source = _source(mapped.source, ctx)
    record.update(language,
                  task=mapped.task or ctx.task or DEFAULT_TASK, source=source,
                  id=f"{source}:{mapped.id or _content_hash(mapped.prompt, mapped.chosen, mapped.rejected)}")
    return record, notes + more


def record_builder(kind: str) -> Callable[[Mapping[str, Any], Callable, RowContext], Tuple[Record, Tuple[str, ...]]]:
    return preference_record if kind == PREFERENCE else conversation_record
