"""Token lengths from the real tokenizer and chat template (batched), and the text sizes behind fertility.

Per row:
- `tokens`: what the trainer processes. Conversation: len(template(messages)). Preference:
  len(template(prompt + chosen)) + len(template(prompt + rejected)) (the prompt is processed twice).
- `longest`: the longest single sequence (conversation: the same; preference: the longer of the two),
  compared with the stages' max_length for over-length rows.
- `content_tokens`, `chars`, `words`: the message texts alone, tokenised without the template; fertility
  per language is content_tokens / chars and content_tokens / words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np

from aya_train.data.schema import CHOSEN, PREFERENCE, PROMPT, REJECTED

BATCH = 512


@dataclass
class TokenStats:
    tokens: np.ndarray  # int64 per row
    longest: np.ndarray  # int64 per row
    content_tokens: np.ndarray
    chars: np.ndarray
    words: np.ndarray


def _templated_lengths(tokenizer: Any, conversations: List[List[Dict[str, str]]]) -> List[int]:
    ids = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True)["input_ids"]
    return [len(x) for x in ids]


def token_stats(records: Sequence[Dict[str, Any]], kind: str, tokenizer: Any) -> TokenStats:
    """Lengths of every record, tokenised in batches of BATCH."""
    n = len(records)
    tokens, longest = np.zeros(n, np.int64), np.zeros(n, np.int64)
    content, chars, words = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for start in range(0, n, BATCH):
        batch = records[start:start + BATCH]
        if kind == PREFERENCE:
            chosen = _templated_lengths(tokenizer, [r[PROMPT] + r[CHOSEN] for r in batch])
            rejected = _templated_lengths(tokenizer, [r[PROMPT] + r[REJECTED] for r in batch])
            lengths = [c + r for c, r in zip(chosen, rejected)]
            longs = [max(c, r) for c, r in zip(chosen, rejected)]
            texts = ["\n".join(m["content"] for m in r[PROMPT] + r[CHOSEN] + r[REJECTED]) for r in batch]
        else:
            lengths = longs = _templated_lengths(tokenizer, [r["messages"] for r in batch])
            texts = ["\n".join(m["content"] for m in r["messages"]) for r in batch]
        end = start + len(batch)
        tokens[start:end], longest[start:end] = lengths, longs
        content[start:end] = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        chars[start:end] = [len(t) for t in texts]
        words[start:end] = [len(t.split()) for t in texts]
    return TokenStats(tokens, longest, content, chars, words)


def fertility(languages: Sequence[str], stats: TokenStats) -> Dict[str, Dict[str, float]]:
    """Per language: tokens per character and per whitespace-separated word of the message texts."""
    codes, inverse = np.unique(np.asarray(languages, dtype=object), return_inverse=True)
    out: Dict[str, Dict[str, float]] = {}
    for i, code in enumerate(codes):
        mask = inverse == i
        tok, ch, wd = stats.content_tokens[mask].sum(), stats.chars[mask].sum(), stats.words[mask].sum()
        out[str(code)] = {"tokens_per_char": float(tok / ch) if ch else 0.0,
                          "tokens_per_word": float(tok / wd) if wd else 0.0}
    return out
