"""Judges for pairwise evaluation: which of two responses to the same prompt is better.

`compare(prompts, first, second)` gives the outcome for `first` per prompt: 1 win, 0.5 tie, 0 loss.
Identical responses are a tie without asking anyone (a model against itself with the same sampling seed).

- RewardModelJudge: a trained reward model (a `reward` stage's final folder; a LoRA adapter is merged into its
  base first) scores each prompt + response; the higher score wins, equal scores tie. Scores are cached,
  so a baseline compared with several models is scored once.
- EndpointJudge: an LLM behind an OpenAI-compatible `/chat/completions` endpoint (e.g. a vLLM server) is asked
  for a verdict; with `swap_positions` it is asked twice with the responses in both orders and the two
  verdicts averaged, which cancels a preference for the first (or second) position. Off unless configured.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

Messages = List[Dict[str, str]]


def _ties_first(first: Sequence[str], second: Sequence[str]) -> Tuple[List[Optional[float]], List[int]]:
    """Outcomes with identical pairs already decided (0.5), and the indices still to judge."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} responses against {len(second)}; they must pair up")
    outcomes: List[Optional[float]] = [0.5 if a.strip() == b.strip() else None for a, b in zip(first, second)]
    return outcomes, [i for i, o in enumerate(outcomes) if o is None]


class RewardModelJudge:
    """The higher reward-model score wins; `name` says which reward model judged."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "reward_model", batch_size: int = 16,
                 max_length: int = 1024):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.batch_size, self.max_length = batch_size, max_length
        self._cache: Dict[str, float] = {}

    @classmethod
    def from_path(cls, path: str, model_cfg: Any, *, work_dir: Any, name: str, batch_size: int = 16,
                  max_length: int = 1024) -> "RewardModelJudge":
        """Load a reward model folder (full weights or a SEQ_CLS LoRA adapter, merged under `work_dir`)."""
        from aya_train.modeling import load_model, load_tokenizer, merge_adapter_if_any, on_gpu

        path = merge_adapter_if_any(path, model_cfg, work_dir)
        tokenizer = load_tokenizer(model_cfg, path)
        model = load_model(model_cfg, path, task="seq_cls", pad_token_id=tokenizer.pad_token_id)
        if on_gpu():
            model = model.to("cuda")
        return cls(model, tokenizer, name=name, batch_size=batch_size, max_length=max_length)

    def _text(self, prompt: Messages, response: str) -> str:
        # The same rendering trl's RewardTrainer trains on: the whole conversation through the chat template.
        return self.tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": response}],
                                                  tokenize=False)

    @torch.inference_mode()
    def scores(self, prompts: Sequence[Messages], responses: Sequence[str]) -> List[float]:
        """Reward per (prompt, response), cached by the rendered text."""
        texts = [self._text(p, r) for p, r in zip(prompts, responses, strict=True)]
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"  # the classifier reads the last non-pad token
        try:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                batch = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                       max_length=self.max_length, add_special_tokens=False).to(self.model.device)
                logits = self.model(**batch).logits[:, 0].float().tolist()
                self._cache.update(zip(chunk, logits))
        finally:
            self.tokenizer.padding_side = side
        return [self._cache[t] for t in texts]

    def compare(self, prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]) -> List[float]:
        outcomes, todo = _ties_first(first, second)
        if todo:
            pick = lambda seq: [seq[i] for i in todo]  # noqa: E731
            a = self.scores(pick(prompts), pick(first))
            b = self.scores(pick(prompts), pick(second))
            for i, sa, sb in zip(todo, a, b):
                outcomes[i] = 1.0 if sa > sb else 0.0 if sa < sb else 0.5
        return outcomes


JUDGE_PROMPT = """You are comparing two assistant responses to the same conversation. Prefer the response that \
answers the user's last message helpfully, correctly and in the user's language.

Conversation:
{conversation}

Response A:
{a}

Response B:
{b}

Answer with a single letter: A if Response A is better, B if Response B is better, T if they are equally good."""


def parse_verdict(text: str) -> float:
    """The outcome for response A from the judge's reply: A -> 1, B -> 0, T (or unreadable) -> 0.5."""
    match = re.match(r"\W*(?:RESPONSE|ANSWER|VERDICT)?\W*([ABT])\b", text.strip().upper())
    return {"A": 1.0, "B": 0.0}.get(match.group(1), 0.5) if match else 0.5


class EndpointJudge:
    """An LLM judge behind an OpenAI-compatible endpoint; the API key is read from an environment variable."""

    def __init__(self, base_url: str, model: str, *, api_key_env: Optional[str] = "OPENAI_API_KEY",
                 swap_positions: bool = True, max_tokens: int = 4, timeout_s: float = 60.0,
                 post: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.swap_positions, self.max_tokens, self.timeout_s = model, swap_positions, max_tokens, timeout_s
        self.api_key_env = api_key_env
        self.name = f"endpoint:{model}"
        self._post = post or self._http_post

    def _http_post(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"  # never logged, never stored
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode("utf-8"), headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def verdict(self, prompt: Messages, a: str, b: str) -> float:
        conversation = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
        payload = {"model": self.model, "temperature": 0.0, "max_tokens": self.max_tokens,
                   "messages": [{"role": "user", "content": JUDGE_PROMPT.format(conversation=conversation, a=a, b=b)}]}
        reply = self._post(payload)
        return parse_verdict(reply["choices"][0]["message"]["content"] or "")

    def compare(self, prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]) -> List[float]:
        outcomes, todo = _ties_first(first, second)
        for i in todo:
            forward = self.verdict(prompts[i], first[i], second[i])
            if self.swap_positions:
                # Asked again with the order swapped; the judge's outcome for `first` is then 1 - verdict.
                outcomes[i] = (forward + 1.0 - self.verdict(prompts[i], second[i], first[i])) / 2
            else:
                outcomes[i] = forward
        return outcomes
