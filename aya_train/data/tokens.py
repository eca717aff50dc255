"""Token lengths from the real tokenizer and chat template (batched), and the text sizes behind fertility.

Per row:
- `tokens`: what the trainer processes. Conversation: len(template(messages)). Preference:
  len(template(prompt + chosen)) + len(template(prompt + rejected)) (the prompt is processed twice).
- `longest`: the longest single sequence (conversation: the same; preference: the longer of the two),
  compared with the stages' max_length for over-length rows.
- `content_tokens`, `chars`, `words`: the message texts alone, tokenised without the template; fertility
  per language is content_tokens / chars and content_tokens / words.

Conversation rows can also keep what was tokenised (`keep`: `input_ids`, and `assistant_masks`), the same call
trl's SFTTrainer makes, so that the SFT stage hands trl tokenised rows and nothing is tokenised twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from aya_train.data.schema import CHOSEN, PREFERENCE, PROMPT, REJECTED

BATCH = 512
# The columns `keep` may name: trl's SFTTrainer tokenises `messages` into exactly these. Kept in memory until
# the trainer has prepared them, so in the narrowest types that hold them (trl stores input_ids as int32 too).
INPUT_IDS, ASSISTANT_MASKS = "input_ids", "assistant_masks"
KEPT_TYPES = {INPUT_IDS: pa.list_(pa.int32()), ASSISTANT_MASKS: pa.list_(pa.int8())}
LENGTH_FIELDS = ("tokens", "longest", "content_tokens", "chars", "words")


@dataclass
class TokenStats:
    tokens: np.ndarray  # int64 per row
    longest: np.ndarray  # int64 per row
    content_tokens: np.ndarray
    chars: np.ndarray
    words: np.ndarray
    # The kept token columns, one row per record (None when nothing was kept; never stored in a cache).
    encoded: Optional[pa.Table] = None

    def take(self, indices: np.ndarray) -> "TokenStats":
        """The statistics of the rows at `indices`, in that order."""
        encoded = None if self.encoded is None else self.encoded.take(pa.array(indices, pa.int64()))
        return TokenStats(*(getattr(self, f)[indices] for f in LENGTH_FIELDS), encoded=encoded)


def _templated(tokenizer: Any, conversations: List[List[Dict[str, str]]], masks: bool) -> Dict[str, list]:
    # Same call (and defaults) as trl's SFTTrainer tokenize step, batched.
    return tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=masks)


def token_stats(records: Sequence[Dict[str, Any]], kind: str, tokenizer: Any, keep: Sequence[str] = ()) -> TokenStats:
    """Lengths of every record, tokenised in batches of BATCH; conversation rows keep the columns in `keep`."""
    n = len(records)
    tokens, longest = np.zeros(n, np.int64), np.zeros(n, np.int64)
    content, chars, words = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    kept: Dict[str, list] = {name: [] for name in keep} if kind != PREFERENCE else {}
    for start in range(0, n, BATCH):
        batch = records[start:start + BATCH]
        if kind == PREFERENCE:
            chosen = [len(x) for x in _templated(tokenizer, [r[PROMPT] + r[CHOSEN] for r in batch], False)[INPUT_IDS]]
            rejected = [len(x) for x in _templated(tokenizer, [r[PROMPT] + r[REJECTED] for r in batch], False)[INPUT_IDS]]
            lengths = [c + r for c, r in zip(chosen, rejected)]
            longs = [max(c, r) for c, r in zip(chosen, rejected)]
            texts = ["\n".join(m["content"] for m in r[PROMPT] + r[CHOSEN] + r[REJECTED]) for r in batch]
        else:
            out = _templated(tokenizer, [r["messages"] for r in batch], ASSISTANT_MASKS in kept)
            lengths = longs = [len(x) for x in out[INPUT_IDS]]
            for name, values in kept.items():
                values.extend(out[name])
            texts = ["\n".join(m["content"] for m in r["messages"]) for r in batch]
        end = start + len(batch)
        tokens[start:end], longest[start:end] = lengths, longs
        content[start:end] = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        chars[start:end] = [len(t) for t in texts]
        words[start:end] = [len(t.split()) for t in texts]
    encoded = pa.table({name: pa.array(values, KEPT_TYPES[name]) for name, values in kept.items()}) if kept else None
    return TokenStats(tokens, longest, content, chars, words, encoded)


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
