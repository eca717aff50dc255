"""Preference presets: one raw row -> canonical prompt / chosen / rejected messages.

Accepted shapes, by field (names can be remapped with a mapping format):
- `prompt`: a string (one user turn), a list of messages, or absent;
- `chosen` / `rejected`: a string (the assistant answer), one {role, content} message, or a whole
  conversation ending with the answer (UltraFeedback-style). A conversation's earlier turns must equal the
  prompt, or become the prompt when the row has none; chosen and rejected must continue the same prompt.
- optional `system`, `language`, `task`, `id` (or `prompt_id`).

Validation of the result (roles, identical answers, languages) happens in `loading`.
Registry: PREFERENCE_PRESETS (name -> function); add an entry to support another layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping  # typing.Mapping makes isinstance much slower per row
from typing import Any, Callable, Dict, List, Optional, Tuple

from aya_train.data.presets import Message, UnknownPresetError, _message, _optional, _require, mapping_fields
from aya_train.data.schema import BAD_ROLES, MISSING_FIELD, UNKNOWN_LAYOUT, WRONG_TYPE, RowError


@dataclass(frozen=True)
class MappedPair:
    """What a preference preset extracts from a row; None means "not in the row"."""

    prompt: List[Message]
    chosen: List[Message]
    rejected: List[Message]
    language: Optional[str] = None
    task: Optional[str] = None
    id: Optional[str] = None
    source: Optional[str] = None
    notes: Tuple[str, ...] = ()


PreferencePreset = Callable[[Mapping[str, Any]], MappedPair]

PREFERENCE_MAPPING_FIELDS = ("prompt", "chosen", "rejected", "system", "language", "task", "id")


def _messages_of(value: Any, key: str) -> List[Message]:
    """A string (one turn), one message object, or a list of messages -> list of {role, content}."""
    if isinstance(value, str):
        role = "user" if key == "prompt" else "assistant"
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping):
        return [_message(value, 0)]
    if isinstance(value, list):
        if not value:
            raise RowError(f"field {key!r} is an empty list", MISSING_FIELD)
        return [_message(m, i) for i, m in enumerate(value)]
    raise RowError(f"field {key!r} must be a string, a message or a list of messages, got {type(value).__name__}",
                   WRONG_TYPE)


def _same_turns(a: List[Message], b: List[Message]) -> bool:
    key = lambda msgs: [(m.get("role"), (m.get("content") or "").strip() if isinstance(m.get("content"), str)
                         else m.get("content")) for m in msgs]
    return key(a) == key(b)


def pair_from_fields(prompt: Any, chosen: Any, rejected: Any, system: Optional[str] = None) -> Tuple[
        List[Message], List[Message], List[Message]]:
    """Canonical (prompt, [chosen answer], [rejected answer]) from the accepted shapes."""
    chosen_msgs, rejected_msgs = _messages_of(chosen, "chosen"), _messages_of(rejected, "rejected")
    chosen_ctx, rejected_ctx = chosen_msgs[:-1], rejected_msgs[:-1]
    if prompt is None:
        if not chosen_ctx:
            raise RowError("no prompt: give a `prompt` field, or `chosen`/`rejected` as conversations that "
                           "start with the prompt", MISSING_FIELD)
        prompt_msgs = chosen_ctx
    else:
        prompt_msgs = _messages_of(prompt, "prompt")
    for key, ctx in (("chosen", chosen_ctx), ("rejected", rejected_ctx)):
        if ctx and not _same_turns(ctx, prompt_msgs):
            raise RowError(f"`{key}` is a conversation whose turns before the answer differ from the prompt; "
                           "chosen and rejected must answer the same prompt", BAD_ROLES)
    if system and not (prompt_msgs and prompt_msgs[0].get("role") == "system"):
        prompt_msgs = [{"role": "system", "content": system}] + prompt_msgs
    return prompt_msgs, [chosen_msgs[-1]], [rejected_msgs[-1]]


def preference(row: Mapping[str, Any]) -> MappedPair:
    """prompt/chosen/rejected as strings or message lists (UltraFeedback binarized included)."""
    prompt = row.get("prompt")
    prompt = prompt if prompt is not None and prompt != "" else None
    p, c, r = pair_from_fields(prompt, _require(row, "chosen"), _require(row, "rejected"), _optional(row, "system"))
    return MappedPair(p, c, r, _optional(row, "language"), _optional(row, "task"), _optional(row, "id", "prompt_id"))


def auto_preference(row: Mapping[str, Any]) -> MappedPair:
    """`auto` for preference data sets: rows with chosen and/or rejected (a missing one is a missing field)."""
    if "chosen" in row or "rejected" in row:
        return preference(row)
    raise RowError(
        f"cannot tell the preference layout of this row (fields found: {', '.join(sorted(map(str, row))) or 'none'}); "
        "expected prompt/chosen/rejected, or set `format` to a mapping such as "
        "{prompt: question, chosen: good, rejected: bad}", UNKNOWN_LAYOUT)


PREFERENCE_PRESETS: Dict[str, PreferencePreset] = {
    "auto": auto_preference,
    "preference": preference,
}


def preference_mapping_preset(mapping: Mapping[str, Any]) -> PreferencePreset:
    """Preset for {canonical_field: field_in_file} over a preference layout; checked once, here."""
    fields = mapping_fields(mapping, PREFERENCE_MAPPING_FIELDS, "preference")
    if not {"chosen", "rejected"} <= set(fields):
        raise UnknownPresetError(f"a preference format mapping must name `chosen` and `rejected`, got {fields}")

    def mapped(row: Mapping[str, Any]) -> MappedPair:
        prompt = row.get(fields["prompt"]) if "prompt" in fields else None
        system = _optional(row, fields["system"]) if "system" in fields else None
        p, c, r = pair_from_fields(prompt if prompt != "" else None, _require(row, fields["chosen"]),
                                   _require(row, fields["rejected"]), system)
        extra = {k: _optional(row, fields[k]) if k in fields else None for k in ("language", "task", "id")}
        return MappedPair(p, c, r, extra["language"], extra["task"], extra["id"])

    return mapped
