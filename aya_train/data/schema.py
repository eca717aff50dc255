"""Canonical record shapes, the errors that name a bad row, and the conversation check.

Conversation record (what every reader + preset produces)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "language": "sw",          # canonical code (aya_train.data.languages.normalize_language)
     "task": "general",         # free label; mixtures group by it
     "source": "aya_dataset",   # source label (SourceConfig.name or the file/folder stem)
     "id": "aya_dataset:3f2a...",  # stable: source + the row's own id, or a hash of its content
     "language_inferred": False, "language_confidence": 1.0}  # identified offline? with what confidence

Preference record (what every preference preset produces)::

    {"prompt": [messages ending with a user turn], "chosen": [one assistant message],
     "rejected": [one assistant message], "language", "task", "source", "id"}
"""

from __future__ import annotations

from collections.abc import Mapping  # typing.Mapping makes isinstance much slower per row
from typing import Any, Optional

MESSAGES = "messages"
LANGUAGE = "language"
TASK = "task"
SOURCE = "source"
ID = "id"
# Whether `language` came from offline identification rather than the data or the config.
LANGUAGE_INFERRED = "language_inferred"
# Confidence of that identification (0..1); 1.0 when the data or the config gave the language.
LANGUAGE_CONFIDENCE = "language_confidence"
CONVERSATION_FIELDS = (MESSAGES, LANGUAGE, TASK, SOURCE, ID, LANGUAGE_INFERRED, LANGUAGE_CONFIDENCE)

PROMPT = "prompt"
CHOSEN = "chosen"
REJECTED = "rejected"
PREFERENCE_FIELDS = (PROMPT, CHOSEN, REJECTED, LANGUAGE, TASK, SOURCE, ID, LANGUAGE_INFERRED, LANGUAGE_CONFIDENCE)

# Kinds of data set (DataSetConfig.kind).
CONVERSATION = "conversation"
PREFERENCE = "preference"
KINDS = (CONVERSATION, PREFERENCE)

# Why a row is bad: stable keys the quarantine file and the report count by.
INVALID_JSON = "invalid JSON"
NOT_AN_OBJECT = "not an object"
INVALID_UTF8 = "invalid UTF-8"
NUL_BYTE = "NUL byte"
MISSING_FIELD = "missing or empty field"
WRONG_TYPE = "wrong type"
BAD_ROLES = "unknown role or broken role order"
EMPTY_TURN = "empty turn"
UNKNOWN_LAYOUT = "unknown layout"
UNKNOWN_LANGUAGE = "unknown language"
CHOSEN_EQUALS_REJECTED = "chosen == rejected"
LANGUAGE_MISMATCH = "prompt/chosen/rejected in different languages"
OVER_LENGTH = "over length"

ROLES = ("system", "user", "assistant")
DEFAULT_TASK = "general"

_DEFAULT_HINT = "fix or remove this row; rows are read strictly so that nothing is dropped unnoticed"


class RowError(ValueError):
    """Why one row cannot become a canonical record; `category` is one of the keys above."""

    def __init__(self, reason: str, category: str = WRONG_TYPE) -> None:
        super().__init__(reason)
        self.category = category


class ExcludedRow(Exception):
    """A row left out on purpose (e.g. code-mixed text); counted by reason in the data summary, not an error."""


class DataError(Exception):
    """A bad row, named by where it is ("path:line" or "path[row N]") and why."""

    def __init__(self, location: str, reason: str, hint: Optional[str] = None, category: str = "") -> None:
        self.location = location
        self.reason = reason
        self.hint = hint or _DEFAULT_HINT
        self.category = category
        super().__init__(location, reason)

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}\n  hint: {self.hint}"


def check_conversation(record: Mapping[str, Any]) -> None:
    """Raise RowError unless record['messages'] is [system?] then user/assistant pairs ending with assistant."""
    messages = record.get(MESSAGES)
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{MESSAGES}' must be a non-empty list of {{role, content}}, got {_short(messages)}",
                       MISSING_FIELD if not messages else WRONG_TYPE)
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RowError(f"message {i} must be a {{role, content}} object, got {_short(message)}", WRONG_TYPE)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}", BAD_ROLES)
        if not isinstance(content, str) or not content.strip():
            category = EMPTY_TURN if content is None or isinstance(content, str) else WRONG_TYPE
            raise RowError(f"message {i} ({role}) has empty or non-text content {_short(content)}", category)
        if "\x00" in content:
            raise RowError(f"message {i} ({role}) contains a NUL byte", NUL_BYTE)
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        raise RowError("conversation has a system message but no user/assistant turns", BAD_ROLES)
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = i + (len(messages) - len(turns))
            raise RowError(
                f"message {position} has role {message['role']!r} where {expected!r} was expected; "
                "turns must alternate user/assistant after at most one leading system message", BAD_ROLES
            )
    if turns[-1]["role"] != "assistant":
        raise RowError("conversation ends with a user turn; the last message must be the assistant's answer", BAD_ROLES)


def check_preference(record: Mapping[str, Any]) -> None:
    """Raise RowError unless prompt + chosen and prompt + rejected are valid conversations whose answers differ."""
    for key in (PROMPT, CHOSEN, REJECTED):
        value = record.get(key)
        if not isinstance(value, list) or not value:
            raise RowError(f"'{key}' must be a non-empty list of messages, got {_short(value)}",
                           MISSING_FIELD if not value else WRONG_TYPE)
    for key in (CHOSEN, REJECTED):
        if len(record[key]) != 1:
            raise RowError(f"'{key}' must be exactly one assistant message, got {len(record[key])} messages", BAD_ROLES)
        try:
            check_conversation({MESSAGES: list(record[PROMPT]) + list(record[key])})
        except RowError as e:
            raise RowError(f"prompt + {key}: {e}", e.category) from None
    if record[CHOSEN][0]["content"].strip() == record[REJECTED][0]["content"].strip():
        raise RowError("chosen and rejected answers are identical; a preference pair needs two different answers",
                       CHOSEN_EQUALS_REJECTED)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
