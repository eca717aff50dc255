"""Field-mapping presets: one raw row (dict) -> canonical conversation fields.

A preset only reshapes; language normalisation, defaults and validation happen in `loading`.
Registries (extend them to add a layout): PRESETS (conversation presets, name -> function) here, and
PREFERENCE_PRESETS in `aya_train.data.preference`; a format's kind is the registry it is in.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from collections.abc import Mapping  # typing.Mapping makes isinstance much slower per row
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from aya_train.data.schema import BAD_ROLES, MISSING_FIELD, UNKNOWN_LAYOUT, WRONG_TYPE, ExcludedRow, RowError

Message = Dict[str, str]


@dataclass(frozen=True)
class Mapped:
    """What a preset extracts from a row; None means "not in the row" (the source config or a default fills it)."""

    messages: List[Message]
    language: Optional[str] = None
    task: Optional[str] = None
    id: Optional[str] = None
    # Source label from the row itself (Aya Collection's dataset_name); SourceConfig.name wins over it.
    source: Optional[str] = None
    # Changes made to the row on the way (e.g. a trailing unanswered turn dropped); counted in the summary.
    notes: Tuple[str, ...] = ()


Preset = Callable[[Mapping[str, Any]], Mapped]


class UnknownPresetError(ValueError):
    """A `format` that is neither a preset name nor a valid field mapping."""


# ShareGPT dumps name the speakers in several ways; these are the ones seen in public exports.
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "system": "system"}

# Chatterbot-corpus folders that are not one language: Hindi-English code-mixing in Latin script would
# blur both languages' metrics, so it is excluded (and counted).
CHATTERBOT_EXCLUDED_FOLDERS = {"hinglish": "code-mixed Hindi-English (hinglish) in Latin script"}

MAPPING_FIELDS = ("prompt", "response", "messages", "system", "language", "task", "id")


def _require(row: Mapping[str, Any], key: str) -> Any:
    if key not in row or row[key] is None:
        raise RowError(f"field {key!r} is missing; fields found: {', '.join(sorted(map(str, row))) or 'none'}",
                       MISSING_FIELD)
    return row[key]


def _optional(row: Mapping[str, Any], *keys: str) -> Optional[str]:
    """First non-empty value among `keys`, as text (ids may be numbers)."""
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _as_list(value: Any, key: str) -> List[Any]:
    if not isinstance(value, list):  # pyarrow gives lists; anything else is a layout mistake
        raise RowError(f"field {key!r} must be a list of messages, got {type(value).__name__}", WRONG_TYPE)
    return value


def _message(raw: Any, index: int) -> Message:
    """{role, content} from an OpenAI-style or ShareGPT-style ({from, value}) message."""
    if not isinstance(raw, Mapping):
        raise RowError(f"message {index} must be an object, got {type(raw).__name__}", WRONG_TYPE)
    if "from" in raw and "role" not in raw:
        speaker = str(raw.get("from", "")).strip().lower()
        if speaker not in _SHAREGPT_ROLES:
            raise RowError(f"message {index} is from {raw.get('from')!r}; expected one of {', '.join(_SHAREGPT_ROLES)}",
                           BAD_ROLES)
        return {"role": _SHAREGPT_ROLES[speaker], "content": raw.get("value")}
    return {"role": raw.get("role"), "content": raw.get("content")}


def _single_turn(prompt: Any, response: Any) -> List[Message]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def aya_dataset(row: Mapping[str, Any]) -> Mapped:
    """Aya Dataset / Aya Collection: inputs -> user, targets -> assistant; ISO code preferred over the name.

    `annotation_type` (original vs re-annotation) says how a row was made, not what task it is, so it is
    not used; the Aya Collection's `task_type` is.
    """
    return Mapped(
        messages=_single_turn(_require(row, "inputs"), _require(row, "targets")),
        language=_optional(row, "language_code", "language"),
        task=_optional(row, "task_type"),
        id=_optional(row, "id"),
    )


def aya_collection(row: Mapping[str, Any]) -> Mapped:
    """Aya Collection: inputs/targets/language/script/task_type/dataset_name; dataset_name is the row's source."""
    return Mapped(
        messages=_single_turn(_require(row, "inputs"), _require(row, "targets")),
        language=_optional(row, "language_code", "language"),
        task=_optional(row, "task_type"),
        id=_optional(row, "id"),
        source=_optional(row, "dataset_name"),
    )


def alpaca(row: Mapping[str, Any]) -> Mapped:
    """Alpaca: instruction (+ optional input, appended after a blank line) -> user; output -> assistant."""
    instruction = _require(row, "instruction")
    extra = _optional(row, "input")
    prompt = f"{instruction}\n\n{extra}" if isinstance(instruction, str) and extra else instruction
    msgs = _single_turn(prompt, _require(row, "output"))
    system = _optional(row, "system")
    if system:
        msgs.insert(0, {"role": "system", "content": system})
    return Mapped(msgs, _optional(row, "language"), _optional(row, "task"), _optional(row, "id"))


def sharegpt(row: Mapping[str, Any]) -> Mapped:
    """ShareGPT: `conversations` of {from, value}, kept whole; an optional top-level `system` prompt goes first."""
    messages = [_message(m, i) for i, m in enumerate(_as_list(_require(row, "conversations"), "conversations"))]
    system = _optional(row, "system")
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return Mapped(messages, _optional(row, "language"), _optional(row, "task"), _optional(row, "id"))


def messages(row: Mapping[str, Any]) -> Mapped:
    """OpenAI chat format: `messages` of {role, content}, optional `language`, `task`, `id`."""
    msgs = [_message(m, i) for i, m in enumerate(_as_list(_require(row, "messages"), "messages"))]
    return Mapped(msgs, _optional(row, "language"), _optional(row, "task"), _optional(row, "id"))


def chatterbot(row: Mapping[str, Any]) -> Mapped:
    """A chatterbot-corpus conversation {turns, folder, category} -> alternating user/assistant turns."""
    folder = str(row.get("folder", ""))
    if folder.lower() in CHATTERBOT_EXCLUDED_FOLDERS:
        raise ExcludedRow(CHATTERBOT_EXCLUDED_FOLDERS[folder.lower()])
    turns = row.get("turns")
    # The installed corpus itself has these defects; the user cannot edit an installed package, so they
    # are excluded and counted rather than stopping the run.
    if not isinstance(turns, list):
        raise ExcludedRow("chatterbot conversation is not a list of turns (YAML indentation defect in the corpus)")
    if len(turns) < 2:
        raise ExcludedRow("chatterbot conversation has a single turn and no answer")
    notes: Tuple[str, ...] = ()
    if len(turns) % 2:
        turns, notes = turns[:-1], ("dropped a trailing unanswered user turn",)
    roles = ("user", "assistant")
    msgs = [{"role": roles[i % 2], "content": turn} for i, turn in enumerate(turns)]
    return Mapped(msgs, language=folder or None, task=_optional(row, "category"), notes=notes)


def auto(row: Mapping[str, Any]) -> Mapped:
    """Pick the preset from the row's keys: messages, conversations (ShareGPT) or inputs+targets (Aya)."""
    if "messages" in row:
        return messages(row)
    if "conversations" in row:
        return sharegpt(row)
    if "inputs" in row and "targets" in row:
        return aya_collection(row) if "dataset_name" in row else aya_dataset(row)
    if "instruction" in row and "output" in row:
        return alpaca(row)
    if "chosen" in row and "rejected" in row:
        raise RowError("this row is a preference pair (chosen/rejected) in a conversation data set; set the data "
                       "set's `kind: preference` (or `format: preference`)", UNKNOWN_LAYOUT)
    raise RowError(
        f"cannot tell the layout of this row (fields found: {', '.join(sorted(map(str, row))) or 'none'}); "
        f"set `format` to one of {', '.join(PRESETS)} or to a mapping such as "
        "{prompt: question, response: answer}", UNKNOWN_LAYOUT
    )


PRESETS: Dict[str, Preset] = {
    "auto": auto,
    "aya_dataset": aya_dataset,
    "aya_collection": aya_collection,
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "messages": messages,
    "chatterbot": chatterbot,
}


def mapping_fields(mapping: Mapping[str, Any], allowed: Sequence[str], kind: str) -> Dict[str, str]:
    """A user mapping {canonical_field: field_in_file} as strings; unknown canonical fields are refused
    with a close match, once, here, not per row."""
    fields = {str(k): str(v) for k, v in mapping.items()}
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        close = {k: difflib.get_close_matches(k, allowed, 1) for k in unknown}
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if m else repr(k) for k, m in close.items()]
        raise UnknownPresetError(f"format mapping has unknown field(s) {', '.join(hints)}; "
                                 f"{kind} fields are {', '.join(allowed)}")
    return fields


def mapping_preset(mapping: Mapping[str, Any]) -> Preset:
    """Preset for a user mapping {canonical_field: field_in_file} over a conversation layout."""
    fields = mapping_fields(mapping, MAPPING_FIELDS, "canonical")
    single = "prompt" in fields and "response" in fields and "messages" not in fields
    multi = "messages" in fields and "prompt" not in fields and "response" not in fields
    if not (single or multi):
        raise UnknownPresetError("format mapping must name either `messages` or both `prompt` and `response`, "
                                 f"got {fields}")

    def mapped(row: Mapping[str, Any]) -> Mapped:
        if single:
            msgs = _single_turn(_require(row, fields["prompt"]), _require(row, fields["response"]))
        else:
            raw = _as_list(_require(row, fields["messages"]), fields["messages"])
            msgs = [_message(m, i) for i, m in enumerate(raw)]
        system = _optional(row, fields["system"]) if "system" in fields else None
        if system and not (msgs and msgs[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": system})
        extra = {k: _optional(row, fields[k]) if k in fields else None for k in ("language", "task", "id")}
        return Mapped(msgs, extra["language"], extra["task"], extra["id"])

    return mapped


def format_kind(fmt: Any) -> Optional[str]:
    """`preference` or `conversation` for a format that implies one; None for `auto` (either kind)."""
    from aya_train.data.preference import PREFERENCE_MAPPING_FIELDS, PREFERENCE_PRESETS

    if isinstance(fmt, Mapping):
        return "preference" if set(map(str, fmt)) & (set(PREFERENCE_MAPPING_FIELDS) - set(MAPPING_FIELDS)) \
            else "conversation"
    if fmt == "auto":
        return None
    if fmt in PREFERENCE_PRESETS:
        return "preference"
    return "conversation" if fmt in PRESETS else None


def get_preset(fmt: Any, kind: str = "conversation") -> Preset:
    """The preset for a SourceConfig.format (a preset name or a {canonical_field: field_in_file} mapping)."""
    from aya_train.data.preference import PREFERENCE_MAPPING_FIELDS, PREFERENCE_PRESETS, preference_mapping_preset

    if kind == "preference":
        registry, fields = PREFERENCE_PRESETS, PREFERENCE_MAPPING_FIELDS
        if isinstance(fmt, Mapping):
            return preference_mapping_preset(fmt)
    else:
        registry, fields = PRESETS, MAPPING_FIELDS
        if isinstance(fmt, Mapping):
            return mapping_preset(fmt)
    if isinstance(fmt, str) and fmt in registry:
        return registry[fmt]
    other = PREFERENCE_PRESETS if kind != "preference" else PRESETS
    if isinstance(fmt, str) and fmt in other:
        raise UnknownPresetError(f"format {fmt!r} is a {'preference' if other is PREFERENCE_PRESETS else 'conversation'} "
                                 f"layout but the data set's kind is {kind!r}; set the data set's `kind` to match, "
                                 f"or use one of {', '.join(registry)}")
    close = difflib.get_close_matches(str(fmt), list(PRESETS) + list(PREFERENCE_PRESETS), n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownPresetError(
        f"unknown format {fmt!r}: {suggestion}presets are {', '.join(registry)}, "
        "or give a mapping {canonical_field: field_in_file} with fields " + ", ".join(fields)
    )
