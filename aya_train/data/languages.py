"""Language codes: one canonical form (BCP-47 base subtag) for any code or English name, and offline identification."""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from typing import Dict, List, Tuple

from langcodes import Language, LanguageTagError, standardize_tag
from langcodes.registry_parser import parse_registry

# Valid tags that name no single language; a per-language metric over them would be meaningless.
NOT_A_LANGUAGE = frozenset({"und", "mul", "zxx", "mis"})

# Names langcodes cannot resolve offline (its name data lives in the optional `language_data` package,
# and the IANA registry it ships describes some languages under other names). Keys are lower-case.
_ALIASES: Dict[str, str] = {
    "traditionalchinese": "zh",  # chatterbot-corpus folder name
    "traditional chinese": "zh",  # a script (zh-Hant), not a language, in IANA terms
    "simplified chinese": "zh",  # a script (zh-Hans), not a language, in IANA terms
    "mandarin": "zh",  # IANA only has "Mandarin Chinese"
    "greek": "el",  # IANA has "Modern Greek (1453-)" and "Ancient Greek (to 1453)"
    "farsi": "fa",  # common English name of Persian, absent from IANA
    # Common English names (Google Translate, Aya Dataset) that IANA spells differently.
    "slovene": "sl",  # IANA: "Slovenian"
    "sesotho": "st",  # IANA: "Southern Sotho"
    "kirundi": "rn",  # IANA: "Rundi"
    "fula": "ff",  # IANA: "Fulah"
}


class UnknownLanguageError(ValueError):
    """A value that is neither a known language code nor a known English language name."""


def _base_subtag(tag: str) -> str:
    """Base language subtag of a standardized tag, with macrolanguage members folded (swh -> sw)."""
    return Language.get(standardize_tag(tag, macro=True)).language or ""


def _name_key(value: str) -> str:
    """Lower case, single spaces, accents dropped, so "Norwegian Bokmal" finds "Norwegian Bokmål"."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", folded.strip().lower())


@functools.lru_cache(maxsize=None)
def _name_index() -> Dict[str, str]:
    """English name (lower case) -> canonical code, from the IANA registry that langcodes ships."""
    index: Dict[str, str] = {}
    # The registry lists 2-letter codes first, so on a name clash the widely used code wins.
    for entry in parse_registry():
        subtag = entry.get("Subtag", "")
        if entry.get("Type") != "language" or ".." in subtag:  # `..` marks private-use ranges
            continue
        code = _base_subtag(subtag)
        if not code or code in NOT_A_LANGUAGE:
            continue
        for description in entry.get("Description", []):
            full = _name_key(description)
            index.setdefault(full, code)
            # "Swahili (macrolanguage)" is also just "Swahili".
            index.setdefault(_name_key(re.sub(r"\s*\(.*?\)", "", description)), code)
    for name, code in _ALIASES.items():
        index[name] = code
    return index


def _from_tag(value: str) -> str:
    """Canonical code when `value` is a valid language tag, else ''."""
    try:
        code = _base_subtag(value.replace("_", "-"))
    except (LanguageTagError, ValueError):
        return ""
    if not code or code in NOT_A_LANGUAGE or not Language.get(code).is_valid():
        return ""
    return code


def normalize_language(value: str) -> str:
    """Canonical BCP-47 base subtag (2-letter where one exists) for a code, tag or English name."""
    if not isinstance(value, str):
        return _normalize(value)
    return _normalize_cached(value)  # rows repeat a handful of labels: resolve each once


@functools.lru_cache(maxsize=65536)
def _normalize_cached(value: str) -> str:
    return _normalize(value)


def _normalize(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UnknownLanguageError(
            f"language {value!r} is empty or not a string; give a code such as 'sw' or a name such as 'Swahili'"
        )
    key = _name_key(value)
    if key in _ALIASES:
        return _ALIASES[key]
    code = _from_tag(value.strip()) or _name_index().get(key, "")
    if code:
        return code
    raise UnknownLanguageError(_unknown_message(value))


def _unknown_message(value: str) -> str:
    index = _name_index()
    key = _name_key(value)
    matches = difflib.get_close_matches(key, list(index), n=3, cutoff=0.75)
    hint = ", ".join(f"{name!r} -> {index[name]}" for name in matches)
    suggestion = (f"; did you mean {hint}?" if hint
                  else "; use an ISO 639 code (e.g. 'sw', 'swh') or an English name (e.g. 'Swahili')")
    if key in NOT_A_LANGUAGE:
        suggestion = "; it names no single language (leave the language empty to identify it from the text)"
    return f"unknown language {value!r}{suggestion}"


@functools.lru_cache(maxsize=None)
def _identifier():
    """The py3langid model, loaded once on first use (about a second)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> Tuple[str, float]:
    """(canonical code, confidence 0..1) of `text`, identified offline; ('und', 0.0) for empty text."""
    if not text or not text.strip():
        return "und", 0.0
    ranked: List[Tuple[str, float]] = _identifier().rank(text)
    label, confidence = next((lab, p) for lab, p in ranked if lab not in NOT_A_LANGUAGE)
    try:
        return normalize_language(label), float(confidence)
    except UnknownLanguageError:  # a model label langcodes does not know: keep it as is
        return label, float(confidence)
