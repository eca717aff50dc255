"""The mixture plan: how many times each available training row is used, from shares by source, language and
task (formulas in the README, "Data mixtures").

Everything is numpy over group sizes and per-row index arrays (no per-row Python objects), so a plan over
10M rows takes seconds. The plan depends only on the data, the config and the seed: every rank computes
the same one, and a restarted run gets the same rows (so the trainer can resume mid-epoch).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LEVELS = ("source", "language", "task")
UNITS = ("examples", "tokens")


class MixtureError(ValueError):
    """A mixture config that cannot be planned (names the key to fix)."""


@dataclass
class MixturePlan:
    """Per row: times used (`repeats`); per leaf group (source, language, task): sizes, targets, realised."""

    indices: np.ndarray  # int64 rows of the available train split, ascending, repeats adjacent
    repeats: np.ndarray  # times each available row is used (intp)
    groups: List[Tuple[str, str, str]]  # (source, language, task) per leaf group, sorted
    rows: np.ndarray  # available rows per group
    units: np.ndarray  # available size per group in `unit` (rows or tokens)
    target: np.ndarray  # target size per group in `unit` (after caps and redistribution)
    realised_rows: np.ndarray
    realised_units: np.ndarray
    capped: np.ndarray  # bool: the group's (or an ancestor's) cap limited it (a cap holds to within one row)
    distinct_rows: np.ndarray  # rows used at least once per group
    tokens: Optional[np.ndarray]  # available tokens per group, when token lengths are known
    unit: str
    budget: float  # what was asked for (natural size when budget is null)
    reachable: float  # what the caps allow (== budget unless every group is capped)

    @property
    def digest(self) -> str:
        """sha256 of the planned row indices: equal on every rank and every run with the same inputs."""
        return hashlib.sha256(np.ascontiguousarray(self.indices).tobytes()).hexdigest()[:16]

    @property
    def is_identity(self) -> bool:
        return bool((self.repeats == 1).all())


def encode(column: Any) -> Tuple[np.ndarray, List[str]]:
    """Codes (integers, in sorted name order) and names of a string column (Arrow array or sequence)."""
    arr = column if isinstance(column, (pa.Array, pa.ChunkedArray)) else pa.array(list(column), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    names = [str(n) for n in arr.dictionary.to_pylist()]
    codes = arr.indices.to_numpy(zero_copy_only=False)  # int8/16/32 as Arrow chose: no copy
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    if np.array_equal(order, np.arange(len(names))):
        return codes, names
    remap = np.empty(len(names), np.int32)
    remap[order] = np.arange(len(names), dtype=np.int32)
    return remap[codes], [names[i] for i in order]


def _level(cfg: Any, level: str) -> Dict[str, Any]:
    node = getattr(cfg, level)
    key = _language_key if level == "language" else str
    return {"alpha": float(node.alpha), "weights": {key(k): v for k, v in (node.weights or {}).items()},
            "shares": {key(k): v for k, v in (node.shares or {}).items()},
            "max_epochs": None if node.max_epochs is None else float(node.max_epochs)}


def _language_key(name: Any) -> str:
    """Language names in weights/shares mean what they mean in the data: `Swahili`, `swh` and `sw` are one."""
    from aya_train.data.languages import UnknownLanguageError, normalize_language

    try:
        return normalize_language(str(name))
    except UnknownLanguageError:
        return str(name)  # reported as naming no group


def _check_names(levels: List[Dict[str, Any]], names: List[List[str]], order: List[str]) -> None:
    """A weight or share for a name no row has is a typo, not a no-op: say which names exist."""
    import difflib

    for level, lv, present in zip(order, levels, names):
        for kind in ("weights", "shares"):
            for name in lv[kind]:
                if name not in present:
                    close = difflib.get_close_matches(name, present, n=1)
                    hint = f" Did you mean `{close[0]}`?" if close else ""
                    shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
                    raise MixtureError(f"mixture.{level}.{kind}: no {level} `{name}` in the data.{hint} "
                                       f"The data has: {shown}.")


def check_mixture(cfg: Any, where: str = "mixture") -> None:
    """Raise MixtureError for settings no data can fix (called by recipe validation too)."""
    if sorted(cfg.levels) != sorted(LEVELS):
        raise MixtureError(f"{where}.levels must order all of {', '.join(LEVELS)}, got {list(cfg.levels)}")
    if cfg.unit not in UNITS:
        raise MixtureError(f"{where}.unit must be one of {', '.join(UNITS)}, got {cfg.unit!r}")
    if cfg.budget is not None and cfg.budget <= 0:
        raise MixtureError(f"{where}.budget must be positive or null (natural size), got {cfg.budget}")
    for level in LEVELS:
        lv = _level(cfg, level)
        if lv["alpha"] < 0:
            raise MixtureError(f"{where}.{level}.alpha must be >= 0, got {lv['alpha']}")
        bad = {k: v for k, v in lv["weights"].items() if v is None or float(v) < 0}
        if bad:
            raise MixtureError(f"{where}.{level}.weights must be >= 0, got {bad}")
        shares = {k: float(v) for k, v in lv["shares"].items()}
        if any(v < 0 or v > 1 for v in shares.values()) or sum(shares.values()) > 1 + 1e-9:
            raise MixtureError(f"{where}.{level}.shares must each be in [0, 1] and sum to at most 1, got {shares}")
        if lv["max_epochs"] is not None and lv["max_epochs"] <= 0:
            raise MixtureError(f"{where}.{level}.max_epochs must be positive or null, got {lv['max_epochs']}")


def split_parent(amount: float, names: Sequence[str], sizes: np.ndarray, caps: np.ndarray,
                 level: Dict[str, Any]) -> np.ndarray:
    """Split `amount` among siblings: fixed shares for named ones, weight * size**alpha for the rest, then
    caps with the excess redistributed over the uncapped in proportion to their shares (water-filling)."""
    fixed = np.array([float(level["shares"].get(n, np.nan)) for n in names])
    is_fixed = ~np.isnan(fixed)
    weights = np.array([float(level["weights"].get(n, 1.0)) for n in names])
    free = weights * (sizes ** level["alpha"] if level["alpha"] else (sizes > 0).astype(float))
    share = np.zeros(len(names))
    fixed_total = fixed[is_fixed].sum()
    if (~is_fixed).any() and free[~is_fixed].sum() > 0:
        share[is_fixed] = fixed[is_fixed]
        share[~is_fixed] = (1.0 - fixed_total) * free[~is_fixed] / free[~is_fixed].sum()
    elif fixed_total > 0:  # only named groups here: their shares, renormalised
        share[is_fixed] = fixed[is_fixed] / fixed_total
    alloc = amount * share
    open_ = share > 0
    while True:
        over = open_ & (alloc > caps * (1 + 1e-12))
        if not over.any():
            return alloc
        alloc[over] = caps[over]
        open_ &= ~over
        left = amount - alloc[~open_ & (share > 0)].sum()
        if not open_.any() or left <= 0:
            return alloc
        alloc[open_] = left * share[open_] / share[open_].sum()


def plan_mixture(labels: Dict[str, Any], cfg: Any, seed: int, sizes: Optional[np.ndarray] = None) -> MixturePlan:
    """Plan the mixture over rows labelled by `labels` (level -> column). `sizes`: per-row tokens when
    cfg.unit is tokens (None means every row counts 1)."""
    check_mixture(cfg)
    order = list(cfg.levels)
    encoded = {lv: encode(labels[lv]) for lv in order}
    n = len(encoded[order[0]][0])
    if cfg.unit == "tokens" and sizes is None:
        raise MixtureError("mixture.unit is tokens but no token lengths are known (the tokenizer was not loaded)")
    unit_size = None if cfg.unit == "examples" else np.asarray(sizes, np.int64)
    dims = [len(encoded[lv][1]) for lv in order]
    space = int(np.prod(dims))
    combined = encoded[order[0]][0].astype(np.int32 if space < 2 ** 31 else np.int64)
    for lv, dim in zip(order[1:], dims[1:]):
        combined *= dim
        combined += encoded[lv][0]
    if space <= 50_000_000:  # counting over the whole label space is O(rows)
        counts = np.bincount(combined, minlength=space)
        present = np.flatnonzero(counts)
        # uint16 group ids when they fit: half the memory, and they sort by radix in O(n)
        remap = np.zeros(space, np.uint16 if len(present) <= 65536 else np.int32)
        remap[present] = np.arange(len(present))
        leaf, rows = remap[combined], counts[present]
    else:
        present, leaf, rows = np.unique(combined, return_inverse=True, return_counts=True)
        leaf = leaf.astype(np.int32)
    del combined
    digits = np.stack(np.unravel_index(present, dims), axis=1)  # per group: code at each level
    units = rows.astype(np.float64) if unit_size is None else np.bincount(leaf, weights=unit_size,
                                                                           minlength=len(present))
    budget = float(cfg.budget) if cfg.budget is not None else float(units.sum())
    levels = [_level(cfg, lv) for lv in order]
    _check_names(levels, [encoded[lv][1] for lv in order], order)
    target, capped = _targets(digits, units, [encoded[lv][1] for lv in order], levels, budget)
    position = {lv: i for i, lv in enumerate(order)}
    groups = [tuple(encoded[lv][1][d[position[lv]]] for lv in LEVELS) for d in digits]
    repeats, realised_rows, realised_units, distinct = _realise(leaf, unit_size, rows, units, target, groups, seed)
    indices = (np.flatnonzero(repeats) if repeats.max(initial=0) <= 1
               else np.repeat(np.arange(n, dtype=np.int64), repeats))
    tokens = (None if sizes is None else units if unit_size is not None
              else np.bincount(leaf, weights=np.asarray(sizes), minlength=len(rows)))
    return MixturePlan(indices, repeats, groups, rows, units, target, realised_rows, realised_units, capped,
                       distinct, tokens, cfg.unit, budget, float(target.sum()))


def _targets(digits: np.ndarray, units: np.ndarray, names: List[List[str]], levels: List[Dict[str, Any]],
             budget: float) -> Tuple[np.ndarray, np.ndarray]:
    """Target size per leaf: top-down split of the budget, each node bounded by its effective capacity."""
    depth = len(levels)
    node_of, sizes, caps = [], [], []
    for d in range(depth):  # node ids per depth (prefix of the level codes), sizes and own caps
        _, ids = np.unique(digits[:, : d + 1], axis=0, return_inverse=True)
        ids = ids.reshape(-1)
        node_of.append(ids)
        size = np.bincount(ids, weights=units)
        cap = levels[d]["max_epochs"]
        sizes.append(size)
        caps.append(size * cap if cap is not None else np.full(len(size), np.inf))
    for d in range(depth - 2, -1, -1):  # effective capacity: own cap and what the children can take
        child_caps = np.zeros(len(caps[d]))
        first_leaf = _first(node_of[d + 1])
        np.add.at(child_caps, node_of[d][first_leaf], caps[d + 1])
        caps[d] = np.minimum(caps[d], child_caps)
    alloc = np.array([budget])
    parent_of = np.zeros(len(sizes[0]), np.int64)
    capped = np.zeros(len(units), bool)
    for d in range(depth):
        first_leaf = _first(node_of[d])  # a leaf of each node at depth d: its name and parent
        if d:
            parent_of = node_of[d - 1][first_leaf]
        child_alloc = np.zeros(len(sizes[d]))
        for p in range(len(alloc)):
            kids = np.flatnonzero(parent_of == p) if d else np.arange(len(sizes[0]))
            kid_names = [names[d][digits[first_leaf[k], d]] for k in kids]
            child_alloc[kids] = split_parent(alloc[p], kid_names, sizes[d][kids], caps[d][kids], levels[d])
        capped |= np.isclose(child_alloc, caps[d])[node_of[d]] & np.isfinite(caps[d])[node_of[d]]
        alloc = child_alloc
    return alloc, capped


def _first(ids: np.ndarray) -> np.ndarray:
    """Index of the first leaf of each node id 0..max."""
    first = np.full(ids.max() + 1, -1, np.int64)
    first[ids[::-1]] = np.arange(len(ids) - 1, -1, -1)
    return first


def _realise(leaf: np.ndarray, unit_size: Optional[np.ndarray], rows: np.ndarray, units: np.ndarray,
             target: np.ndarray, groups: List[Tuple[str, str, str]], seed: int):
    """Repeats per row meeting each group's target: whole passes over the group, then rows of a seeded random
    order of the group while they fit, then one more row for the groups furthest below target until the
    total reaches round(sum of targets) (so the total is met within one row).
    Returns (repeats per row, realised rows, realised units, distinct rows used) per group."""
    safe = np.where(units > 0, units, 1.0)
    passes = np.where(units > 0, np.floor(target / safe + 1e-9), 0).astype(np.int64)
    rest = target - passes * units
    # intp: what np.repeat wants (a narrower type costs a conversion pass over every row)
    repeats = passes.astype(np.intp)[leaf] if passes.any() else np.zeros(len(leaf), np.intp)
    realised_rows, realised_units = passes * rows, passes * units
    distinct = np.where(passes > 0, rows, 0)
    need = np.flatnonzero((rest > 1e-9) & (units > 0))
    extra: List[Tuple[float, int, int]] = []  # (fraction of the next row still wanted, group, row)
    if need.size:
        # rows keep their order inside a group (stable); uint16 ids sort by radix
        by_group = np.argsort(leaf, kind="stable")
        starts = np.concatenate([[0], np.cumsum(rows)])
    for g in need:
        members = by_group[starts[g]:starts[g + 1]]
        # seeded by the group's names: a group's rows do not change when other groups come or go
        rng = np.random.default_rng([seed, zlib.crc32("\x1f".join(groups[g]).encode())])
        if unit_size is None:  # examples: `take` rows, plus one candidate for the final rounding
            take = min(int(np.floor(rest[g] + 1e-9)), len(members))
            order = members[rng.choice(len(members), min(len(members), take + 1), replace=False)]
            done, next_size = float(take), 1.0
        else:
            order = members[rng.permutation(len(members))]
            cum = np.cumsum(unit_size[order])
            take = int(np.searchsorted(cum, rest[g] + 1e-9, side="right"))
            done = float(cum[take - 1]) if take else 0.0
            next_size = float(unit_size[order[take]]) if take < len(order) else 1.0
        repeats[order[:take]] += 1
        realised_rows[g] += take
        realised_units[g] += done
        distinct[g] = rows[g] if passes[g] else take
        if take < len(order):
            extra.append(((rest[g] - done) / next_size, int(g), int(order[take])))
    total, goal = float(realised_units.sum()), round(float(target.sum()))
    extra.sort(key=lambda e: (-e[0], e[1]))
    for _, g, row in extra:
        if total >= goal:
            break
        size = 1.0 if unit_size is None else float(unit_size[row])
        repeats[row] += 1
        realised_rows[g] += 1
        realised_units[g] += size
        distinct[g] += 0 if passes[g] else 1
        total += size
    return repeats, realised_rows, realised_units, distinct


def apply_mixture(data: Any, cfg: Any, seed: int) -> None:
    """Plan the mixture over `data.available`; set `data.train` (and its token lengths and columns) to the planned rows."""
    table = data.available.data.table if hasattr(data.available.data, "table") else data.available.data
    labels = {lv: table.column(lv) for lv in LEVELS}
    if data.available.num_rows == 0:
        return
    plan = plan_mixture(labels, cfg, seed, sizes=data.available_tokens)
    data.plan = plan
    data.train = data.available if plan.is_identity else data.available.select(plan.indices)
    if data.available_tokens is not None:  # lengths stay aligned with the rows they describe
        data.train_tokens = data.available_tokens if plan.is_identity else data.available_tokens[plan.indices]
    if data.available_encoded is not None:  # so do the kept token columns
        data.train_encoded = (data.available_encoded if plan.is_identity
                              else data.available_encoded.take(pa.array(plan.indices, pa.int64())))
