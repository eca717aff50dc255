"""Errors written for the person at the terminal: what is wrong, where, and what to type instead."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(Exception):
    """A bad recipe, override or reference; the CLI prints it and exits 2 before anything loads."""


def suggest(word: str, choices: Iterable[str]) -> str:
    """' Did you mean `x`?' for the closest choice, or ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean `{match[0]}`?" if match else ""


def _fields_of(object_type: Optional[type]) -> list[str]:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def explain(exc: BaseException) -> str:
    """Turn a Hydra / OmegaConf composition error into one actionable sentence."""
    # Hydra wraps the OmegaConf error that knows the key; find the innermost one.
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, OmegaConfBaseException):
        key = getattr(inner, "full_key", None) or getattr(inner, "key", None) or "?"
        msg = str(getattr(inner, "msg", None) or inner).splitlines()[0]
        if "not in" in msg or "is not in struct" in msg:
            leaf = str(key).split(".")[-1]
            parent = str(key).rpartition(".")[0]
            valid = _fields_of(getattr(inner, "object_type", None))
            parent_node = getattr(inner, "parent_node", None)
            if not valid and parent_node is not None and OmegaConf.is_dict(parent_node):
                valid = [str(k) for k in parent_node.keys()]
            where = f" under `{parent}`" if parent else ""
            known = f" Valid keys: {', '.join(valid)}." if valid else ""
            return f"unknown config key `{key}`{where}.{suggest(leaf, valid)}{known}"
        return f"`{key}`: {msg}"
    first = str(exc).strip().splitlines()
    text = " ".join(line.strip() for line in first if line.strip())
    if text.startswith("Could not override"):
        key = text.split("'")[1]
        return f"unknown config key `{key}` (no such field in the recipe's schema). {text}"
    return text
