"""The stage plan: graph checks before any work, reuse / resume / run / skip / refuse by fingerprint,
run.only / run.from_stage / run.force, and the checkpoint and metrics helpers behind resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aya_train.cli import main
from aya_train.errors import ConfigError
from aya_train.pipeline import plan_stages, run_dir_for
from aya_train.recipe import compose_recipe, split_recipe_arg, stage_refs
from aya_train.stages.common import (
    CHECKPOINT_METRICS, checkpoint_step, incomplete_checkpoints, last_complete_checkpoint, truncate_metrics,
)


# A two-stage chain of its own, so the plan tests do not follow every change of the demo recipe.
CHAIN = """
defaults:
  - /aya_train
  - /model: tiny
  - /data@data.sft: chatterbot
  - /stage@stages.sft: sft
  - /stage@stages.export: export
  - _self_
run:
  name: chain
stages:
  sft: {data: sft, max_steps: 150, learning_rate: 3.0e-3}
  export: {model: sft, license: apache-2.0}
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("recipes") / "chain.yaml"
    path.write_text(CHAIN)
    return str(path)


@pytest.fixture
def _cfg(tmp_path, chain):
    def compose(*overrides):
        return compose_recipe(chain, [f"run.output_dir={tmp_path}", *overrides])
    return compose


def _actions(cfg):
    return {p.name: p.action for p in plan_stages(cfg, run_dir_for(cfg))}


def _finish(cfg, name):
    """Write what a finished stage leaves: final/, DONE with the fingerprint and inputs of the plan."""
    plan = next(p for p in plan_stages(cfg, run_dir_for(cfg)) if p.name == name)
    run_dir = run_dir_for(cfg)
    run_dir.final_dir(name).mkdir(parents=True, exist_ok=True)
    run_dir.mark_done(name, {"fingerprint": plan.fingerprint, "inputs": plan.inputs, "result": {}})
    return plan


def _checkpoint(stage_dir: Path, step: int, complete: bool = True) -> Path:
    ckpt = stage_dir / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x")
    if complete:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


# ---- graph validation: before anything loads ----

@pytest.mark.parametrize("overrides, message", [
    (["stages.export.model=sfft"], "stages.export.model: no stage `sfft`. Did you mean `sft`?"),
    (["stages.sft.init=export"], "cycle: sft -> export -> sft"),
    (["stages.sft.init=sft"], "cycle: sft -> sft"),
    (["+stage@stages.later=sft", "stages.later.data=sft", "stages.export.model=later"],
     "stages.export.model: `later` is a later stage"),
    (["stages.export.model=null"], "stages.export.model: required"),
    (["stages.sft.data=null"], "stages.sft.data: a sft stage trains on a data set"),
    (["run.only=[sft,expor]"], "run.only: no stage `expor`. Did you mean `export`?"),
    (["run.from_stage=sf"], "run.from_stage: no stage `sf`"),
    (["run.only=[sft]", "run.from_stage=sft"], "run.only and run.from_stage both set"),
    (["run.report_to=[tensorbored]"], "run.report_to: unknown logger `tensorbored`"),
])
def test_bad_stage_graph_is_refused_before_any_work(tmp_path, overrides, message, _cfg):
    with pytest.raises(ConfigError) as err:
        _cfg(*overrides)
    assert message in str(err.value)


def test_cli_exits_2_on_a_cycle_and_explains_run_from(tmp_path, capsys, chain):
    assert main([f"recipe={chain}", f"run.output_dir={tmp_path}", "stages.sft.init=export"]) == 2
    assert "cycle" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="run.from_stage=sft"):
        split_recipe_arg(["recipe=demo", "run.from=sft"])
    assert not any(tmp_path.iterdir())  # nothing written


def test_stage_refs_is_the_one_list_of_dependencies(tmp_path, _cfg):
    cfg = _cfg("+stage@stages.more=sft", "stages.more.data=sft", "stages.more.init=sft")
    assert stage_refs(cfg.stages.export) == [("model", "sft")]
    assert stage_refs(cfg.stages.more) == [("init", "sft")]
    assert stage_refs(cfg.stages.sft) == []


# ---- the plan ----

def test_fresh_run_runs_everything_and_finished_stages_are_reused(tmp_path, _cfg):
    cfg = _cfg()
    assert _actions(cfg) == {"sft": "run", "export": "run"}
    _finish(cfg, "sft")
    assert _actions(cfg) == {"sft": "reuse", "export": "run"}
    _finish(cfg, "export")
    assert _actions(cfg) == {"sft": "reuse", "export": "reuse"}
    # settings outside the fingerprint (where logs go) do not invalidate anything
    assert _actions(_cfg("run.report_to=[]")) == {"sft": "reuse", "export": "reuse"}


def test_changed_inputs_are_refused_naming_the_change_unless_forced(tmp_path, capsys, _cfg, chain):
    cfg = _cfg()
    _finish(cfg, "sft")
    _finish(cfg, "export")
    changed = _cfg("stages.sft.learning_rate=0.001")
    plans = {p.name: p for p in plan_stages(changed, run_dir_for(changed))}
    assert plans["sft"].action == "refuse"
    assert "stages.sft.learning_rate: 0.003 -> 0.001" in plans["sft"].reason
    # the export read sft, so its inputs changed too
    assert plans["export"].action == "refuse" and "upstream stage `sft` changed" in plans["export"].reason
    assert main([f"recipe={chain}", f"run.output_dir={tmp_path}", "stages.sft.learning_rate=0.001"]) == 2
    err = capsys.readouterr().err
    assert "stages.sft.learning_rate: 0.003 -> 0.001" in err and "run.force=true" in err
    assert (run_dir_for(cfg).stage_dir("sft") / "DONE").is_file()  # nothing was touched
    forced = {p.name: p for p in plan_stages(_cfg("stages.sft.learning_rate=0.001", "run.force=true"),
                                             run_dir_for(cfg))}
    assert forced["sft"].action == "run" and forced["sft"].discard
    assert forced["export"].action == "run" and forced["export"].discard
    # changing only the export re-runs only the export
    only_export = _cfg("stages.export.max_shard_size=1GB", "run.force=true")
    assert _actions(only_export) == {"sft": "reuse", "export": "run"}


def test_interrupted_stage_resumes_from_its_newest_complete_checkpoint(tmp_path, _cfg):
    cfg = _cfg()
    plan = plan_stages(cfg, run_dir_for(cfg))[0]
    stage_dir = run_dir_for(cfg).stage_dir("sft")
    stage_dir.mkdir(parents=True)
    (stage_dir / "attempt.json").write_text(json.dumps({"fingerprint": plan.fingerprint, "inputs": plan.inputs}))
    assert _actions(cfg)["sft"] == "run"  # killed before its first checkpoint
    _checkpoint(stage_dir, 4)
    _checkpoint(stage_dir, 8, complete=False)  # killed while saving step 8
    plans = plan_stages(cfg, run_dir_for(cfg))
    assert plans[0].action == "resume" and plans[0].checkpoint.endswith("checkpoint-4")
    # an interrupted attempt with other inputs is not resumed into this one
    changed = _cfg("stages.sft.max_steps=99")
    assert _actions(changed)["sft"] == "refuse"


def test_only_and_from_stage_select_stages_and_need_their_inputs(tmp_path, _cfg):
    cfg = _cfg("run.only=[sft]")
    assert _actions(cfg) == {"sft": "run", "export": "skip"}
    with pytest.raises(ConfigError, match=r"stage `export` reads `sft` \(stages.export.model\), which is not finished"):
        _actions(_cfg("run.only=[export]"))
    with pytest.raises(ConfigError, match="run.from_stage=sft"):
        _actions(_cfg("run.from_stage=export"))
    _finish(_cfg(), "sft")
    assert _actions(_cfg("run.from_stage=export")) == {"sft": "reuse", "export": "run"}
    assert _actions(_cfg("run.only=[export]")) == {"sft": "reuse", "export": "run"}


def test_dry_run_prints_the_plan_and_runs_no_stage(tmp_path, capsys, chain):
    assert main([f"recipe={chain}", f"run.output_dir={tmp_path}", "run.dry_run=true",
                 "data.sft.max_eval_rows_per_language=1"]) == 0
    out = capsys.readouterr().out
    assert "plan" in out and "not run yet" in out and "export" in out
    run_dir = tmp_path / "chain"
    assert not (run_dir / "sft").exists() and not (run_dir / "export").exists()
    assert not (run_dir / "config.yaml").exists()


# ---- checkpoints and the metrics log ----

def test_half_written_checkpoints_are_never_picked(tmp_path):
    stage_dir = tmp_path / "sft"
    _checkpoint(stage_dir, 4)
    broken = _checkpoint(stage_dir, 8)
    (broken / "trainer_state.json").write_text('{"global_step": 8, "log_hi')  # cut short by a kill
    _checkpoint(stage_dir, 12, complete=False)
    assert checkpoint_step(broken) is None
    assert last_complete_checkpoint(stage_dir / "checkpoints").name == "checkpoint-4"
    assert sorted(p.name for p in incomplete_checkpoints(stage_dir / "checkpoints")) == ["checkpoint-12",
                                                                                         "checkpoint-8"]
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_metrics_log_is_cut_back_to_the_resumed_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train/loss": 1.0 / (s + 1)}) + "\n" for s in (0, 2, 4, 4, 6)]
    metrics.write_text("".join(lines))
    ckpt = _checkpoint(tmp_path, 4)
    # recorded at save time: the log's length then
    (ckpt / CHECKPOINT_METRICS).write_text(json.dumps({"step": 4, "metrics_bytes": len("".join(lines[:3]))}))
    truncate_metrics(metrics, ckpt)
    assert metrics.read_text() == "".join(lines[:3])
    # without the note (killed between the Trainer's save and ours): every record up to the step
    metrics.write_text("".join(lines) + '{"step": 8, "trai')
    (ckpt / CHECKPOINT_METRICS).unlink()
    truncate_metrics(metrics, ckpt)
    assert metrics.read_text() == "".join(lines[:4])
    truncate_metrics(metrics, None)  # starting afresh
    assert not metrics.exists()


def test_report_to_is_checked_up_front_and_passed_to_the_trainer(tmp_path, _cfg, monkeypatch):
    import transformers.integrations as integrations
    from trl import SFTConfig

    from aya_train.pipeline import process_state
    from aya_train.stages.common import StageContext, trainer_args

    if "tensorboard" not in integrations.get_available_reporting_integrations():
        with pytest.raises(ConfigError, match="run.report_to: `tensorboard` is not installed; `pip install tensorboard`"):
            _cfg("run.report_to=[tensorboard]")
    # as if it were installed: the name reaches the trl config unchanged
    monkeypatch.setattr(integrations, "get_available_reporting_integrations", lambda: ["tensorboard", "wandb"])
    cfg = _cfg("run.report_to=[tensorboard,wandb]")
    ctx = StageContext("sft", cfg.stages.sft, cfg, run_dir_for(cfg), "", None, process_state())
    assert list(trainer_args(ctx, SFTConfig, has_eval=False).report_to) == ["tensorboard", "wandb"]
    off = _cfg()
    ctx = StageContext("sft", off.stages.sft, off, run_dir_for(off), "", None, process_state())
    assert trainer_args(ctx, SFTConfig, has_eval=False).report_to in ([], "none", ["none"])
