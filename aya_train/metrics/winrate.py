"""Pairwise win-rates per language with bootstrap confidence intervals ("Elo Uncovered": one number is not
enough; report how sure it is).

An outcome per prompt is the model's score against the baseline: 1 win, 0.5 tie, 0 loss (a judge that
swaps positions may also give 0.25 / 0.75). Per language the win-rate is the mean outcome; its interval is
the percentile bootstrap over that language's prompts (resampled with replacement, seeded numpy Generator).
The overall `win_rate` is the mean of the per-language win-rates (every language counts once, as the Aya
papers average), its interval from the same resamples, languages resampled independently (stratified).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Dict, Sequence

import numpy as np

ALL = "all"
METRIC = "win_rate"


@dataclass(frozen=True)
class WinRate:
    """A win-rate with its bootstrap interval and the counts behind it."""

    win_rate: float
    ci_low: float
    ci_high: float
    prompts: int
    wins: int  # prompts where the model came out ahead (outcome above 0.5)
    ties: int  # outcome exactly 0.5
    losses: int  # outcome below 0.5

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def win_rates(outcomes: Sequence[float], languages: Sequence[str], *, samples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> Dict[str, WinRate]:
    """{language: WinRate} plus {"all": WinRate} (mean over languages) for per-prompt outcomes in [0, 1]."""
    if len(outcomes) != len(languages):
        raise ValueError(f"{len(outcomes)} outcomes for {len(languages)} languages; they must pair up")
    if not outcomes:
        raise ValueError("no outcomes to compute a win-rate from (no held-out prompts?)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    values = np.asarray(outcomes, dtype=np.float64)
    if values.min() < 0 or values.max() > 1:
        raise ValueError("outcomes must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    by_language: Dict[str, list] = defaultdict(list)
    for i, lang in enumerate(languages):
        by_language[lang].append(i)
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    out: Dict[str, WinRate] = {}
    boot_means = []
    for lang in sorted(by_language):  # sorted: the draws for a language do not depend on row order elsewhere
        x = values[by_language[lang]]
        draws = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
        boot_means.append(draws)
        out[lang] = _summary(x, x.mean(), draws, tail)
    overall = np.mean([r.win_rate for r in out.values()])
    out[ALL] = _summary(values, overall, np.mean(boot_means, axis=0), tail)
    return out


def _summary(x: np.ndarray, point: float, draws: np.ndarray, tail: float) -> WinRate:
    low, high = np.percentile(draws, [tail, 100 - tail])
    return WinRate(win_rate=float(point), ci_low=float(low), ci_high=float(high), prompts=int(len(x)),
                   wins=int((x > 0.5).sum()), ties=int((x == 0.5).sum()), losses=int((x < 0.5).sum()))


def metrics(rates: Dict[str, WinRate], split: str = "eval") -> Dict[str, float]:
    """`<split>/win_rate/<lang>` with `<split>/win_rate_ci_low/<lang>` and `_ci_high`; `<split>/win_rate` overall."""
    out: Dict[str, float] = {}
    for lang, r in rates.items():
        suffix = "" if lang == ALL else f"/{lang}"
        out[f"{split}/{METRIC}{suffix}"] = r.win_rate
        out[f"{split}/{METRIC}_ci_low{suffix}"] = r.ci_low
        out[f"{split}/{METRIC}_ci_high{suffix}"] = r.ci_high
    return out
