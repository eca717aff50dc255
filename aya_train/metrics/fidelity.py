"""Language fidelity: is a response in the language of its prompt? Judged by the offline identifier
(`aya_train.data.languages.identify_language`, py3langid).

Two uses: a reward function for trl's online trainers (1.0 when the response's identified language is the
prompt's, else 0.0), and a rate per language on held-out prompts (`eval/language_fidelity/<lang>`, with
`eval/language_fidelity` the mean over languages, each language counting once).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from aya_train.data.languages import identify_language

METRIC = "language_fidelity"


def response_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of a list of (assistant) messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return "\n".join(str(m.get("content") or "") for m in completion)


def is_in_language(text: str, language: str) -> bool:
    """True when the identifier's best guess for `text` is `language` (a canonical code); empty text is not."""
    return identify_language(text)[0] == language


def language_fidelity(prompts: Optional[list] = None, completions: Optional[list] = None,
                      language: Optional[List[str]] = None, **_: Any) -> List[float]:
    """trl reward function: 1.0 per completion in its prompt's language (the data set's `language` column), else 0.0."""
    if language is None:
        raise ValueError("the language_fidelity reward needs a `language` column in the prompt data set")
    return [float(is_in_language(response_text(c), lang)) for c, lang in zip(completions, language, strict=True)]


@dataclass
class FidelityResult:
    """Fidelity rate per language on a set of prompts, with how the responses were made."""

    rates: Dict[str, float]  # language -> share of responses identified as that language
    counts: Dict[str, int]  # language -> responses judged
    record: Dict[str, Any] = field(default_factory=dict)  # sampling settings and backend (Generations.record())
    examples: Dict[str, List[str]] = field(default_factory=dict)  # language -> first responses, for reading

    @property
    def mean(self) -> float:
        """Mean of the per-language rates: every language counts once, however many prompts it has."""
        return sum(self.rates.values()) / len(self.rates) if self.rates else 0.0

    def metrics(self, split: str = "eval") -> Dict[str, float]:
        """`<split>/language_fidelity/<lang>` for every language, and `<split>/language_fidelity` (mean)."""
        out = {f"{split}/{METRIC}/{lang}": rate for lang, rate in self.rates.items()}
        out[f"{split}/{METRIC}"] = self.mean
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"rates": self.rates, "counts": self.counts, "mean": self.mean, **self.record,
                "examples": self.examples}


def fidelity_rates(responses: Sequence[str], languages: Sequence[str], record: Optional[Dict[str, Any]] = None,
                   keep_examples: int = 2) -> FidelityResult:
    """Per-language share of `responses` identified as the language of their prompt."""
    if len(responses) != len(languages):
        raise ValueError(f"{len(responses)} responses for {len(languages)} languages; they must pair up")
    hits: Dict[str, int] = defaultdict(int)
    counts: Dict[str, int] = defaultdict(int)
    examples: Dict[str, List[str]] = defaultdict(list)
    for text, lang in zip(responses, languages):
        counts[lang] += 1
        hits[lang] += is_in_language(text, lang)
        if len(examples[lang]) < keep_examples:
            examples[lang].append(text)
    langs = sorted(counts)
    return FidelityResult({l: hits[l] / counts[l] for l in langs}, {l: counts[l] for l in langs}, dict(record or {}),
                          {l: examples[l] for l in langs})


def measure(model: Any, tokenizer: Any, prompts: Sequence[list], languages: Sequence[str],
            settings: Any = None) -> FidelityResult:
    """Generate one response per prompt with a loaded model and rate its language fidelity per language."""
    from aya_train.generation import generate

    out = generate(model, tokenizer, prompts, settings)
    return fidelity_rates(out.responses, languages, out.record())


def measure_path(path: str, model_cfg: Any, prompts: Sequence[list], languages: Sequence[str],
                 settings: Any = None) -> FidelityResult:
    """Like `measure`, for the model saved at `path` (vLLM when installed on a GPU, see aya_train.generation)."""
    from aya_train.generation import generate_from_path

    out = generate_from_path(path, model_cfg, prompts, settings)
    return fidelity_rates(out.responses, languages, out.record())


def measure_policies(policies: Dict[str, str], model_cfg: Any, prompt_rows: Any, settings: Any = None
                     ) -> Dict[str, FidelityResult]:
    """{label: result} for each {label: model folder}, all on the same prompts with the same settings and seed."""
    prompt_list, languages = prompt_rows["prompt"], prompt_rows["language"]
    return {label: measure_path(path, model_cfg, prompt_list, languages, settings) for label, path in policies.items()}
