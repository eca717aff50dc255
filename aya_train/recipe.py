"""Find a recipe, compose it with Hydra, and check it before anything heavy loads."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aya_train.config import register_configs
from aya_train.stage_config import STAGE_SCHEMAS
from aya_train.errors import ConfigError, explain, suggest

_PACKAGE = Path(__file__).resolve().parent
# Env var with extra recipe folders (os.pathsep-separated), searched before the built-in recipes.
RECIPE_PATH_ENV = "AYA_TRAIN_RECIPES"


def _bundled(name: str) -> Path:
    """A folder shipped in the wheel (aya_train/_<name>) or, in a checkout, at the repository root."""
    inside = _PACKAGE / f"_{name}"
    return inside if inside.is_dir() else _PACKAGE.parent / name


def conf_dir() -> Path:
    return _bundled("conf")


def recipe_dirs() -> List[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get(RECIPE_PATH_ENV, "").split(os.pathsep) if p]
    return extra + [_bundled("recipes")]


def available_recipes() -> List[str]:
    names = {p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_recipe(name: str) -> Path:
    """`recipe=NAME` (searched in $AYA_TRAIN_RECIPES, then the built-ins) or `recipe=path/to/file.yaml`."""
    as_path = Path(name).expanduser()
    if as_path.suffix in (".yaml", ".yml"):
        if as_path.is_file():
            return as_path.resolve()
        raise ConfigError(f"recipe file `{name}` does not exist.")
    for d in recipe_dirs():
        candidate = d / f"{name}.yaml"
        if candidate.is_file():
            return candidate.resolve()
    names = available_recipes()
    raise ConfigError(f"unknown recipe `{name}`.{suggest(name, names)} Available: {', '.join(names)}. "
                      f"Add your own folder with {RECIPE_PATH_ENV}=/path/to/recipes or pass recipe=/path/file.yaml.")


def split_recipe_arg(argv: Sequence[str]) -> tuple[str, List[str]]:
    """Separate `recipe=NAME` from the Hydra overrides."""
    recipe, rest = None, []
    for arg in argv:
        if arg.lstrip("+~").startswith("run.from="):
            raise ConfigError("`run.from` is spelled `run.from_stage` (`from` is a Python keyword): "
                              f"run.from_stage={arg.split('=', 1)[1]}")
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if not recipe:
        raise ConfigError(f"no recipe given: run e.g. `aya-train recipe=demo`. Available: {', '.join(available_recipes())}.")
    return recipe, rest


def compose_recipe(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose recipe + conf groups + overrides into one typed config, then validate it."""
    register_configs()
    path = find_recipe(recipe)
    searchpath = f"hydra.searchpath=[file://{conf_dir()}]"
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base=None):
            cfg = compose(config_name=path.stem, overrides=[searchpath, *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{path.name}: {explain(exc)}") from None
    validate(cfg)
    return cfg


def _stage_kind(name: str, node) -> str:
    kind = OmegaConf.select(node, "kind", default=None) if OmegaConf.is_dict(node) else None
    schema = OmegaConf.get_type(node) if OmegaConf.is_dict(node) else None
    if kind not in STAGE_SCHEMAS or schema is not STAGE_SCHEMAS[kind]:
        raise ConfigError(
            f"stage `{name}` has no schema: add `- /stage@stages.{name}: KIND` to the recipe's defaults list "
            f"(KIND one of {', '.join(STAGE_SCHEMAS)})."
        )
    return kind


def validate(cfg: DictConfig) -> None:
    """Cross-field checks that the schema cannot express; raise ConfigError naming the key."""
    from aya_train.data.prepare import check_data_set
    from aya_train.data.readers import check_source
    from aya_train.stages import trainer_config_class

    if not cfg.stages:
        raise ConfigError("the recipe defines no stages.")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", cfg.run.name):
        raise ConfigError(f"run.name `{cfg.run.name}` must be letters, digits, '.', '_' or '-' (it names a folder).")
    names = list(cfg.stages.keys())
    for name, node in cfg.stages.items():
        _stage_kind(name, node)
    check_stage_graph(cfg)
    for name, node in cfg.stages.items():
        kind = node.kind
        check = getattr(STAGE_SCHEMAS[kind], "check", None)
        if check is not None:
            try:
                check(node)
            except ValueError as exc:
                raise ConfigError(f"stages.{name}.{exc}") from None
        data_name = OmegaConf.select(node, "data", default=None)
        if data_name is not None and data_name not in cfg.data:
            raise ConfigError(f"stages.{name}.data: no data set `{data_name}` under `data`."
                              f"{suggest(data_name, list(cfg.data.keys()))} Defined: {', '.join(cfg.data) or 'none'}.")
        trainer_cls = trainer_config_class(node)
        if trainer_cls is not None and data_name is None:
            raise ConfigError(f"stages.{name}.data: a {kind} stage trains on a data set; set it to one of: "
                              f"{', '.join(cfg.data) or 'none defined (add one under `data`)'}.")
        _check_passthrough(name, node, trainer_cls)
    _check_selection(cfg.run, names)
    _check_report_to(cfg.run.report_to)
    _check_attention(cfg)
    for ds_name, ds in cfg.data.items():
        if not ds.sources:
            raise ConfigError(f"data.{ds_name}.sources is empty: give at least one `{{path: ..., format: ...}}`.")
        try:
            check_data_set(ds_name, ds)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for j, src in enumerate(ds.sources):
            try:
                check_source(src)
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"data.{ds_name}.sources[{j}].path: {exc}") from None
    name_or_path = cfg.model.name_or_path
    if name_or_path != "tiny" and not Path(name_or_path).expanduser().exists() and name_or_path.count("/") != 1:
        raise ConfigError(f"model.name_or_path: `{name_or_path}` is neither a local folder, a hub id (owner/name), "
                          "nor `tiny`.")


def check_stage_graph(cfg: DictConfig) -> None:
    """Every stage reference names an existing, earlier stage, and no references form a cycle."""
    names = list(cfg.stages.keys())
    edges = {name: stage_refs(node) for name, node in cfg.stages.items()}
    for name, node in cfg.stages.items():
        for key in _reference_keys(node):
            if _field_metadata(node, key).get("required") and not node[key]:
                raise ConfigError(f"stages.{name}.{key}: required; name the earlier stage to read "
                                  f"({', '.join(names[:names.index(name)]) or 'none before this one'}).")
        for key, ref in edges[name]:
            if ref not in names:
                raise ConfigError(f"stages.{name}.{key}: no stage `{ref}`.{suggest(ref, names)} "
                                  f"Stages: {', '.join(names)}.")
    cycle = _find_cycle({name: [ref for _, ref in refs] for name, refs in edges.items()})
    if cycle:
        hops = " -> ".join(cycle)
        raise ConfigError(f"stages read each other in a cycle: {hops}. Each stage can only read stages that "
                          "finish before it; break the cycle by pointing one of these references elsewhere.")
    for i, name in enumerate(names):
        for key, ref in edges[name]:
            if ref not in names[:i]:
                raise ConfigError(f"stages.{name}.{key}: `{ref}` is a later stage; stages run in the order of "
                                  f"the recipe's defaults list, so list `/stage@stages.{ref}` before "
                                  f"`/stage@stages.{name}`.")
            kinds = _field_metadata(cfg.stages[name], key).get("kinds")
            if kinds and cfg.stages[ref].kind not in kinds:
                raise ConfigError(f"stages.{name}.{key}: `{ref}` is a {cfg.stages[ref].kind} stage; it must name a "
                                  f"stage of kind {' or '.join(kinds)}.")


def _find_cycle(graph: Dict[str, List[str]]) -> Optional[List[str]]:
    """One cycle of `graph` (node -> nodes it reads) as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt in graph and state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in graph:
        if state.get(start) is None:
            found = visit(start)
            if found:
                return found
    return None


def _check_attention(cfg: DictConfig) -> None:
    """The attention kernel can be used here and every SFT stage's batching suits it: both are refused now,
    with exit 2, rather than by a traceback when the stage starts."""
    from aya_train.batching import resolve_batching
    from aya_train.modeling import resolve_attn_implementation

    try:
        attn = resolve_attn_implementation(cfg.model.attn_implementation)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name, node in cfg.stages.items():
        if node.kind == "sft":
            try:
                resolve_batching(node.batching, attn)
            except ValueError as exc:
                raise ConfigError(f"stages.{name}.batching: {exc}") from None


def _check_selection(run, names: List[str]) -> None:
    """run.only / run.from_stage name existing stages, and only one of them is used."""
    if run.only is not None and run.from_stage is not None:
        raise ConfigError("run.only and run.from_stage both set: use one (run.only=[a,b] runs exactly those "
                          "stages, run.from_stage=a runs a and every stage after it).")
    for key in run.only or []:
        if key not in names:
            raise ConfigError(f"run.only: no stage `{key}`.{suggest(key, names)} Stages: {', '.join(names)}.")
    if run.from_stage is not None and run.from_stage not in names:
        raise ConfigError(f"run.from_stage: no stage `{run.from_stage}`.{suggest(run.from_stage, names)} "
                          f"Stages: {', '.join(names)}.")


def _check_report_to(report_to) -> None:
    """Each logger is one transformers knows, and its package is installed (else the Trainer fails late)."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    available = set(get_available_reporting_integrations())
    for name in report_to:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(f"run.report_to: unknown logger `{name}`.{suggest(name, INTEGRATION_TO_CALLBACK)} "
                              f"Known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}.")
        if name not in available:
            raise ConfigError(f"run.report_to: `{name}` is not installed; `pip install {name}` or drop it "
                              "from run.report_to.")


def _reference_keys(node) -> List[str]:
    """Fields whose value names an earlier stage (init, ref_model, reward_model, ...)."""
    schema = OmegaConf.get_type(node)
    return [f.name for f in dataclasses.fields(schema) if f.metadata.get("stage_ref")]


def _field_metadata(node, key: str) -> dict:
    return next(f.metadata for f in dataclasses.fields(OmegaConf.get_type(node)) if f.name == key)


def stage_refs(node) -> List[Tuple[str, str]]:
    """(key, stage name) for every reference a stage makes; list-valued fields (merge `models`) give one each.
    The one place that says which stages a stage depends on (validation, pipeline order, lineage)."""
    refs = []
    for key in _reference_keys(node):
        value = node[key]
        for ref in (value if OmegaConf.is_list(value) else [value]):
            if ref is not None:
                refs.append((key, ref))
    return refs


def _check_passthrough(name: str, node, trainer_cls: Optional[type]) -> None:
    """`args` may set any field of the trl config class, but not one the stage schema already types."""
    if trainer_cls is None:  # a stage without a trl trainer (merge, evaluate)
        if node.get("args") is not None:
            raise ConfigError(f"stages.{name}.args: a {node.kind} stage runs no trl trainer and takes no `args`; "
                              f"set its own fields (stages.{name}.<field>) instead.")
        return
    valid = {f.name for f in dataclasses.fields(trainer_cls)}
    typed = {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}
    for key in node.args:
        if key in typed:
            raise ConfigError(f"stages.{name}.args.{key}: `{key}` is a stage field; set stages.{name}.{key} instead.")
        if key not in valid:
            raise ConfigError(f"stages.{name}.args.{key}: not a field of trl's {trainer_cls.__name__}."
                              f"{suggest(key, valid)}")
