"""Run a recipe: plan every stage (reuse / resume / run / skip) before any work, then run the plan.

A stage's fingerprint hashes what determines its output (its config, the model, its data set's config, the
seed, and the fingerprints of the stages it reads). A stage is reused when its DONE marker carries the same
fingerprint; it resumes from its newest complete checkpoint when an attempt with the same fingerprint was
interrupted. Outputs written with another fingerprint are never overwritten silently: the run stops before
any work and names what changed, unless `run.force=true`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf

from aya_train.artifacts import RunDir, atomic_write_json, atomic_write_text, read_json
from aya_train.data.mixture_report import wait_for_charts
from aya_train.errors import ConfigError
from aya_train.stages import runner
from aya_train.stages.common import CACHE_DIR, StageContext, StageResult, last_complete_checkpoint
from aya_train import report

log = logging.getLogger("aya_train")
ATTEMPT = "attempt.json"


def run_dir_for(cfg: DictConfig) -> RunDir:
    """Absolute `<output_dir>/<run.name>`: identical on every rank (no timestamps)."""
    return RunDir((Path(cfg.run.output_dir).expanduser() / cfg.run.name).resolve())


def stage_inputs(cfg: DictConfig, name: str, upstream: Dict[str, str]) -> Dict[str, Any]:
    """What determines a stage's output: its config, the model, its data set, the seed, its inputs."""
    node = cfg.stages[name]
    data = OmegaConf.select(node, "data", default=None)
    return {
        "stage": OmegaConf.to_container(node, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data[data], resolve=True) if data else None,
        "seed": cfg.run.seed,
        "upstream": upstream,
    }


def stage_fingerprint(cfg: DictConfig, name: str, upstream: Dict[str, str]) -> str:
    """Hash of stage_inputs."""
    payload = stage_inputs(cfg, name, upstream)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _upstream(cfg: DictConfig, name: str) -> List[str]:
    """Earlier stages this one reads (init, reference, reward model, ...), without repeats."""
    from aya_train.recipe import stage_refs

    return list(dict.fromkeys(ref for _, ref in stage_refs(cfg.stages[name])))


def base_model_path(cfg: DictConfig, state: PartialState) -> str:
    """model.name_or_path, or the folder of the built-in tiny model (built once, cached across runs)."""
    if cfg.model.name_or_path != "tiny":
        return str(Path(cfg.model.name_or_path).expanduser()) if Path(cfg.model.name_or_path).expanduser().exists() \
            else cfg.model.name_or_path
    from aya_train.data.loading import demo_corpus_texts
    from aya_train.modeling import build_tiny_model, tiny_model_fingerprint

    texts = demo_corpus_texts()
    texts_fp = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    cache = Path(cfg.run.cache_dir or Path(cfg.run.output_dir) / ".cache").expanduser().resolve()
    out = cache / f"tiny-{tiny_model_fingerprint(cfg.model.tiny, texts_fp, cfg.run.seed)}"
    with state.main_process_first():
        if state.is_main_process:
            build_tiny_model(cfg.model.tiny, texts, out, seed=cfg.run.seed)
    return str(out)


class DataCache:
    """Load each named data set once per process: read, validate, mix and report it (aya_train.data.prepare)."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.loaded, self._tokenizer = cfg, {}, None

    def tokenizer(self):
        """The base model's tokenizer (token lengths, fertility, over-length rows), or None if it cannot load."""
        if self._tokenizer is None:
            from aya_train.modeling import load_tokenizer

            state = process_state()
            if self.cfg.run.dry_run and state.num_processes > 1:
                # only the main process prints a dry run: base_model_path's barrier would wait for the others
                log.warning("data: dry run under several processes; token counts are left out of the data report")
                self._tokenizer = False
                return None
            try:
                self._tokenizer = load_tokenizer(self.cfg.model, base_model_path(self.cfg, state))
            except (OSError, ValueError) as exc:  # e.g. a hub model while offline: rows are still counted
                log.warning("data: no tokenizer (%s); token counts are left out of the data report", exc)
                self._tokenizer = False
        return self._tokenizer or None

    def __call__(self, name: str):
        from aya_train.data.prepare import prepare_data_set

        if name not in self.loaded:
            self.loaded[name] = prepare_data_set(self.cfg, name, run_dir_for(self.cfg).root,
                                                 process_state().is_main_process, self.tokenizer)
        return self.loaded[name]


def process_state() -> PartialState:
    """accelerate's view of this process; without a GPU it must be told so, or a CPU multi-process launch
    would look like one process to it (and every rank would train on its own)."""
    from aya_train.modeling import on_gpu

    return PartialState(cpu=not on_gpu())


@dataclass
class StagePlan:
    """What the pipeline will do with one stage, decided before any work starts."""

    name: str
    kind: str
    # reuse (DONE, same fingerprint) | resume (from `checkpoint`) | run | skip (not selected) | refuse
    action: str
    fingerprint: str
    inputs: Dict[str, Any] = field(repr=False)
    # One line for the plan table: why this action.
    reason: str = ""
    checkpoint: Optional[str] = None
    # Outputs from other inputs are deleted before the stage runs (run.force=true).
    discard: bool = False


def selected_stages(cfg: DictConfig) -> List[str]:
    """Stages run.only / run.from_stage ask for (all by default)."""
    names = list(cfg.stages.keys())
    if cfg.run.only is not None:
        return [n for n in names if n in set(cfg.run.only)]
    if cfg.run.from_stage is not None:
        return names[names.index(cfg.run.from_stage):]
    return names


def plan_stages(cfg: DictConfig, run_dir: RunDir) -> List[StagePlan]:
    """Decide every stage's action from the run directory; reads files only, changes nothing."""
    selected = set(selected_stages(cfg))
    fingerprints: Dict[str, str] = {}
    plans: Dict[str, StagePlan] = {}
    for name, node in cfg.stages.items():
        upstream = {up: fingerprints[up] for up in _upstream(cfg, name)}
        inputs = stage_inputs(cfg, name, upstream)
        fp = fingerprints[name] = stage_fingerprint(cfg, name, upstream)
        plan = StagePlan(name, node.kind, "run", fp, inputs)
        plans[name] = plan
        done = run_dir.done_info(name)
        attempt = read_json(run_dir.stage_dir(name) / ATTEMPT)
        if done and done.get("fingerprint") == fp:
            plan.action, plan.reason = "reuse", f"finished earlier with the same inputs ({run_dir.final_dir(name)})"
            continue
        if name not in selected:
            plan.action = "skip"
            plan.reason = "not selected" + ("; its outputs are from other inputs" if done else "")
            continue
        previous = done or attempt
        has_outputs = (done or run_dir.final_dir(name).is_dir()
                       or last_complete_checkpoint(run_dir.stage_dir(name) / "checkpoints") is not None)
        if previous and previous.get("fingerprint") != fp and has_outputs:
            changed = describe_changes(name, previous.get("inputs"), inputs)
            what = "finished" if done else "has checkpoints"
            if cfg.run.force:
                plan.discard, plan.reason = True, f"{what} with other inputs ({changed}); run.force discards them"
            else:
                plan.action, plan.reason = "refuse", f"{what} with other inputs: {changed}"
            continue
        checkpoint = last_complete_checkpoint(run_dir.stage_dir(name) / "checkpoints")
        if attempt and attempt.get("fingerprint") == fp and checkpoint is not None:
            plan.action, plan.checkpoint = "resume", str(checkpoint)
            plan.reason = f"interrupted; continues from {checkpoint.name}"
        else:
            plan.reason = "not run yet" if not previous else "interrupted before its first checkpoint"
    _check_inputs_available(cfg, plans)
    return list(plans.values())


def _check_inputs_available(cfg: DictConfig, plans: Dict[str, StagePlan]) -> None:
    """A stage that will run must be able to read every stage it depends on."""
    from aya_train.recipe import stage_refs

    for name, plan in plans.items():
        if plan.action not in ("run", "resume"):
            continue
        for key, ref in stage_refs(cfg.stages[name]):
            if plans[ref].action == "skip":
                state = "finished with other inputs" if plans[ref].reason.endswith("other inputs") else "not finished"
                raise ConfigError(f"stage `{name}` reads `{ref}` (stages.{name}.{key}), which is {state}, but "
                                  f"the run leaves `{ref}` out; add it to run.only, or use run.from_stage={ref}.")


def describe_changes(name: str, before: Optional[Dict[str, Any]], after: Dict[str, Any]) -> str:
    """`stages.sft.learning_rate: 0.003 -> 0.001; ...` between two stage_inputs payloads."""
    if not before:
        return "the earlier attempt recorded no inputs"
    old, new = _flatten(before), _flatten(after)
    prefixes = {"stage": f"stages.{name}", "upstream": "upstream stage", "data": f"data set of stages.{name}"}
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            head, _, rest = key.partition(".")
            label = f"{prefixes.get(head, head)}.{rest}" if rest else prefixes.get(head, head)
            if head == "upstream":
                lines.append(f"upstream stage `{rest}` changed")
            else:
                lines.append(f"{label}: {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}")
    return "; ".join(lines[:6]) + (f"; and {len(lines) - 6} more" if len(lines) > 6 else "")


def _flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(obj, dict):
        out: Dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: json.dumps(obj, default=str) if isinstance(obj, list) else obj}


def refusal_message(plans: List[StagePlan]) -> Optional[str]:
    refused = [p for p in plans if p.action == "refuse"]
    if not refused:
        return None
    lines = "\n".join(f"  stage `{p.name}` {p.reason}" for p in refused)
    return (f"outputs in the run directory were made with other inputs:\n{lines}\n"
            "Rerun with run.force=true to discard them and run these stages again, or pick a new run.name.")


def run(cfg: DictConfig) -> Dict[str, StageResult]:
    """Plan, then run the recipe's stages in order; return each executed or reused stage's result."""
    state = process_state()
    run_dir = run_dir_for(cfg)
    plans = plan_stages(cfg, run_dir)
    refused = refusal_message(plans)
    if state.is_main_process:
        report.print_stage_plan(cfg, run_dir, plans)
    if cfg.run.dry_run:
        if state.is_main_process:
            report.print_plan(cfg, run_dir, DataCache(cfg))
            wait_for_charts()
        if refused:
            raise ConfigError(refused)
        return {}
    if refused:
        raise ConfigError(refused)
    state.wait_for_everyone()  # every rank has planned before rank 0 writes anything
    data = DataCache(cfg)
    if state.is_main_process:
        log.info("run %s: processes=%d, directory %s", cfg.run.name, state.num_processes, run_dir.root)
        atomic_write_text(run_dir.root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    base = None
    results: Dict[str, StageResult] = {}
    for plan in plans:
        if plan.action == "reuse":
            log.info("stage %s: %s", plan.name, plan.reason)
            results[plan.name] = StageResult(**run_dir.done_info(plan.name).get("result", {}))
        elif plan.action in ("run", "resume"):
            base = base or base_model_path(cfg, state)
            results[plan.name] = _run_stage(cfg, plan, run_dir, base, data, state)
    if state.is_main_process:
        report.print_languages(results, cfg, run_dir.root / "languages.json")
        report.write_run_report(cfg, run_dir)
        wait_for_charts()
    state.wait_for_everyone()
    return results


def _run_stage(cfg, plan: StagePlan, run_dir: RunDir, base: str, data: DataCache, state) -> StageResult:
    name, node = plan.name, cfg.stages[plan.name]
    stage_dir = run_dir.stage_dir(name)
    if state.is_main_process:
        if plan.discard or (plan.action == "run" and stage_dir.exists()):
            # Outputs of other inputs (run.force), or an attempt killed before its first checkpoint.
            for child in stage_dir.iterdir():
                # <stage>/cache/ holds content-keyed caches (e.g. DPO reference log-probs) that stay valid.
                if child.name != CACHE_DIR:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        run_dir.clear_done(name)
        atomic_write_json(stage_dir / ATTEMPT, {"fingerprint": plan.fingerprint, "inputs": plan.inputs,
                                                "started": time.time()})
        run_dir.update_stage(name, kind=node.kind, status="running", fingerprint=plan.fingerprint,
                             inputs=_upstream(cfg, name), data=OmegaConf.select(node, "data"),
                             resumed_from=plan.checkpoint, started=time.time())
    state.wait_for_everyone()
    log.info("stage %s (%s): %s in %s", name, node.kind, plan.reason, stage_dir)
    ctx = StageContext(name=name, cfg=node, root=cfg, run_dir=run_dir, base_model=base, load_data=data, state=state)
    result = runner(node.kind)(ctx)
    if state.is_main_process:
        atomic_write_json(stage_dir / "languages.json", result.languages)
        run_dir.update_stage(name, status="done", data_fingerprint=result.data_fingerprint, summary=result.summary,
                             finished=time.time())
        run_dir.mark_done(name, {"fingerprint": plan.fingerprint, "inputs": plan.inputs, "result": result.__dict__})
        report.write_run_report(cfg, run_dir)
    state.wait_for_everyone()
    return result


def stage_reads(node) -> Dict[str, Any]:
    """{field: stage name (or list of names)} of the stages a stage reads, for the manifest's lineage."""
    from aya_train.recipe import _reference_keys

    values = {key: node[key] for key in _reference_keys(node)}
    return {key: OmegaConf.to_container(v) if OmegaConf.is_list(v) else v for key, v in values.items() if v}
