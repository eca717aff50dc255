"""Canonical record shapes, the errors that name a bad row, and the conversation check.

Conversation record (what every reader + preset produces)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "language": "sw",          # canonical code (aya_train.data.languages.normalize_language)
     "task": "general",         # free label; mixtures group by it
     "source": "aya_dataset",   # source label (SourceConfig.name or the file/folder stem)
     "id": "aya_dataset:3f2a..."}  # stable: source + the row's own id, or a hash of its content

Preference record (built by a later reader; field names fixed here)::

    {"prompt": [messages ending with a user turn], "chosen": [assistant message(s)],
     "rejected": [assistant message(s)], "language", "task", "source", "id"}
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

MESSAGES = "messages"
LANGUAGE = "language"
TASK = "task"
SOURCE = "source"
ID = "id"
# Whether `language` came from offline identification rather than the data or the config.
LANGUAGE_INFERRED = "language_inferred"
CONVERSATION_FIELDS = (MESSAGES, LANGUAGE, TASK, SOURCE, ID, LANGUAGE_INFERRED)

PROMPT = "prompt"
CHOSEN = "chosen"
REJECTED = "rejected"
PREFERENCE_FIELDS = (PROMPT, CHOSEN, REJECTED, LANGUAGE, TASK, SOURCE, ID)

ROLES = ("system", "user", "assistant")
DEFAULT_TASK = "general"

_DEFAULT_HINT = "fix or remove this row; rows are read strictly so that nothing is dropped unnoticed"


class RowError(ValueError):
    """Why one row cannot become a canonical record."""


class ExcludedRow(Exception):
    """A row left out on purpose (e.g. code-mixed text); counted by reason in the data summary, not an error."""


class DataError(Exception):
    """A bad row, named by where it is ("path:line" or "path[row N]") and why."""

    def __init__(self, location: str, reason: str, hint: Optional[str] = None) -> None:
        self.location = location
        self.reason = reason
        self.hint = hint or _DEFAULT_HINT
        super().__init__(location, reason)

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}\n  hint: {self.hint}"


def check_conversation(record: Mapping[str, Any]) -> None:
    """Raise RowError unless record['messages'] is [system?] then user/assistant pairs ending with assistant."""
    messages = record.get(MESSAGES)
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{MESSAGES}' must be a non-empty list of {{role, content}}, got {_short(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RowError(f"message {i} must be a {{role, content}} object, got {_short(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise RowError(f"message {i} ({role}) has empty or non-text content {_short(content)}")
        if "\x00" in content:
            raise RowError(f"message {i} ({role}) contains a NUL byte")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        raise RowError("conversation has a system message but no user/assistant turns")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = i + (len(messages) - len(turns))
            raise RowError(
                f"message {position} has role {message['role']!r} where {expected!r} was expected; "
                "turns must alternate user/assistant after at most one leading system message"
            )
    if turns[-1]["role"] != "assistant":
        raise RowError("conversation ends with a user turn; the last message must be the assistant's answer")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
