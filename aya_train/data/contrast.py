"""Preference pairs and RL prompts from conversations, after "RLHF Can Speak Many Languages": the chosen
reply is the real one, in the prompt's language; the rejected reply is a real reply from a conversation in
another language. A reward model or policy trained on such pairs learns to answer in the language it is
asked in, which the language-fidelity rate then measures on held-out prompts.

A preference stage (reward, dpo) given a conversation data set builds these pairs; an rl stage takes the
prompts. Both keep the data set's train/eval split, so held-out prompts stay apart from everything trained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List

from datasets import Dataset

from aya_train.data.loading import fingerprint
from aya_train.data.schema import CHOSEN, ID, LANGUAGE, MESSAGES, PROMPT, REJECTED, SOURCE, TASK

PREFERENCE_COLUMNS = (PROMPT, CHOSEN, REJECTED, LANGUAGE, TASK, SOURCE, ID)
PROMPT_COLUMNS = (PROMPT, LANGUAGE, TASK, SOURCE, ID)
# Bump when the pairing rule changes: fingerprints (and the caches keyed by them) must change with it.
CONTRAST_VERSION = 1


@dataclass
class Split:
    """A train and an eval (held-out) split of the same kind of rows."""

    train: Dataset
    eval: Dataset

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.train, self.eval)


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{CONTRAST_VERSION}:{key}".encode("utf-8")).hexdigest()


def contrast_pairs(conversations: Dataset, seed: int) -> Dataset:
    """One pair per conversation: prompt = every turn before the last reply, chosen = that reply, rejected =
    the last reply of another language's conversation, picked by a seeded hash (same on every machine)."""
    rows = conversations.to_list()
    languages = {row[LANGUAGE] for row in rows}
    if rows and len(languages) < 2:
        raise ValueError(f"in-language vs other-language pairs need at least two languages; this split has only "
                         f"{languages.pop()!r}: add sources in other languages, or give preference data "
                         "(prompt/chosen/rejected) instead of conversations")
    # All rows in one seeded order; each row starts at a seeded position in it and takes the first reply
    # from another language whose text differs from its own.
    order = sorted(range(len(rows)), key=lambda j: _rank(seed, rows[j][ID]))
    out: Dict[str, List[Any]] = {name: [] for name in PREFERENCE_COLUMNS}
    for row in rows:
        chosen = row[MESSAGES][-1]
        start = int(_rank(seed, f"rejected-for:{row[ID]}"), 16) % len(order)
        rejected = next((rows[j][MESSAGES][-1] for j in (order[(start + k) % len(order)] for k in range(len(order)))
                         if rows[j][LANGUAGE] != row[LANGUAGE]
                         and rows[j][MESSAGES][-1]["content"].strip() != chosen["content"].strip()), None)
        if rejected is None:
            raise ValueError(f"row {row[ID]}: no reply in another language differs from its own reply")
        out[PROMPT].append(row[MESSAGES][:-1])
        out[CHOSEN].append([chosen])
        out[REJECTED].append([{"role": "assistant", "content": rejected["content"]}])
        for name in (LANGUAGE, TASK, SOURCE, ID):
            out[name].append(row[name])
    return Dataset.from_dict(out)


def prompts(conversations: Dataset) -> Dataset:
    """Prompt-only rows for online RL and for measuring: every turn before each conversation's last reply."""
    return Dataset.from_dict({
        PROMPT: [m[:-1] for m in conversations[MESSAGES]],
        **{name: conversations[name] for name in (LANGUAGE, TASK, SOURCE, ID)},
    })


def as_preferences(loaded: Any, seed: int) -> Split:
    """Preference rows of a loaded data set: as they are, or contrast pairs built from its conversations."""
    if CHOSEN in loaded.train.column_names:
        return Split(loaded.train.select_columns(list(PREFERENCE_COLUMNS)),
                     loaded.eval.select_columns(list(PREFERENCE_COLUMNS)))
    return Split(contrast_pairs(loaded.train, seed), contrast_pairs(loaded.eval, seed))


def as_prompts(loaded: Any) -> Split:
    """Prompt rows of a loaded data set (conversations or preference pairs): train prompts and held-out prompts."""
    if MESSAGES in loaded.train.column_names:
        return Split(prompts(loaded.train), prompts(loaded.eval))
    return Split(loaded.train.select_columns(list(PROMPT_COLUMNS)), loaded.eval.select_columns(list(PROMPT_COLUMNS)))
