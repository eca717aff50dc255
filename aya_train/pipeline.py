"""Run a recipe: resolve the run directory and base model, then each stage in order, reusing finished ones."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List

from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf

from aya_train.artifacts import RunDir, atomic_write_json, atomic_write_text
from aya_train.stages import runner
from aya_train.stages.common import CACHE_DIR, StageContext, StageResult
from aya_train import report

log = logging.getLogger("aya_train")


def run_dir_for(cfg: DictConfig) -> RunDir:
    """Absolute `<output_dir>/<run.name>`: identical on every rank (no timestamps)."""
    return RunDir((Path(cfg.run.output_dir).expanduser() / cfg.run.name).resolve())


def stage_fingerprint(cfg: DictConfig, name: str, upstream: Dict[str, str]) -> str:
    """Hash of what determines a stage's output: its config, the model, its data set, its inputs."""
    node = cfg.stages[name]
    payload = {
        "stage": OmegaConf.to_container(node, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data[node.data], resolve=True) if node.get("data") else None,
        "seed": cfg.run.seed,
        "upstream": upstream,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _upstream(cfg: DictConfig, name: str) -> List[str]:
    """Earlier stages this one reads (init, reference, reward model, ...)."""
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

            try:
                self._tokenizer = load_tokenizer(self.cfg.model, base_model_path(self.cfg, process_state()))
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


def run(cfg: DictConfig) -> Dict[str, StageResult]:
    """Run the recipe's stages in order; return each executed or reused stage's result."""
    state = process_state()
    run_dir = run_dir_for(cfg)
    data = DataCache(cfg)
    if cfg.run.dry_run:
        if state.is_main_process:
            report.print_plan(cfg, run_dir, data)
        return {}
    if state.is_main_process:
        log.info("run %s: processes=%d, directory %s", cfg.run.name, state.num_processes, run_dir.root)
        atomic_write_text(run_dir.root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    base = base_model_path(cfg, state)
    selected = set(cfg.run.only or cfg.stages.keys())
    fingerprints: Dict[str, str] = {}
    results: Dict[str, StageResult] = {}
    for name, node in cfg.stages.items():
        fp = stage_fingerprint(cfg, name, {up: fingerprints[up] for up in _upstream(cfg, name)})
        fingerprints[name] = fp
        done = run_dir.done_info(name)
        if done and done.get("fingerprint") == fp:
            log.info("stage %s: finished earlier with the same inputs, reusing %s", name, run_dir.final_dir(name))
            results[name] = StageResult(**done.get("result", {}))
            continue
        if name not in selected:
            missing = "unfinished" if not done else "finished with other inputs"
            raise SystemExit(f"stage `{name}` is {missing} but run.only skips it; add it to run.only or drop run.only.")
        results[name] = _run_stage(cfg, name, node, fp, run_dir, base, data, state)
    if state.is_main_process:
        report.print_languages(results)
    state.wait_for_everyone()
    return results


def _run_stage(cfg, name, node, fp, run_dir: RunDir, base: str, data: DataCache, state) -> StageResult:
    stage_dir = run_dir.stage_dir(name)
    attempt = stage_dir / "attempt.json"
    if state.is_main_process:
        previous = json.loads(attempt.read_text()) if attempt.is_file() else None
        if previous and previous.get("fingerprint") != fp:
            # Checkpoints of a run with other inputs must not be resumed into this one.
            log.warning("stage %s: inputs changed since the last attempt; starting it afresh", name)
            for child in stage_dir.iterdir():
                # <stage>/cache/ holds content-keyed caches (e.g. DPO reference log-probs) that stay valid.
                if child.name != CACHE_DIR:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        run_dir.clear_done(name)
        atomic_write_json(attempt, {"fingerprint": fp, "started": time.time()})
        run_dir.update_stage(name, kind=node.kind, status="running", fingerprint=fp, inputs=_upstream(cfg, name),
                             data=node.get("data"), started=time.time())
    state.wait_for_everyone()
    log.info("stage %s (%s): starting in %s", name, node.kind, stage_dir)
    ctx = StageContext(name=name, cfg=node, root=cfg, run_dir=run_dir, base_model=base, load_data=data, state=state)
    result = runner(node.kind)(ctx)
    if state.is_main_process:
        atomic_write_json(stage_dir / "languages.json", result.languages)
        run_dir.update_stage(name, status="done", data_fingerprint=result.data_fingerprint, summary=result.summary,
                             finished=time.time())
        run_dir.mark_done(name, {"fingerprint": fp, "result": result.__dict__})
    state.wait_for_everyone()
    return result
