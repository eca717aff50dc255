"""Crash safety: a run killed with SIGKILL at any point (data preparation, mid-training, in the middle of
writing a checkpoint, between stages, at a moment chosen from outside) finishes, when started again with
the same command, with the same weights and the same metrics log as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import REPO, quick_overrides

# Kills the process itself at a named point (test harness only: it patches the libraries from outside).
DRIVER = r'''
import os, signal, sys

point = os.environ.get("KILL_AT", "")
def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "data":  # the data set is read and mixed, nothing trained yet
    import aya_train.data.prepare as prepare
    original = prepare.prepare_data_set
    def prepare_then_die(*args, **kwargs):
        original(*args, **kwargs)
        die()
    prepare.prepare_data_set = prepare_then_die
elif point.startswith("step:"):  # in the middle of an optimiser step, after some checkpoints
    from transformers import Trainer
    at, original = int(point[5:]), Trainer.training_step
    def step(self, *args, **kwargs):
        if self.state.global_step == at:
            die()
        return original(self, *args, **kwargs)
    Trainer.training_step = step
elif point.startswith("save:"):  # checkpoint-N has its weights but no optimizer state or trainer_state.json
    from transformers import Trainer
    at, original = int(point[5:]), Trainer._save_optimizer_and_scheduler
    def save(self, output_dir):
        if self.state.global_step == at:
            die()
        return original(self, output_dir)
    Trainer._save_optimizer_and_scheduler = save
elif point == "between":  # sft finished (DONE written), export not started
    from aya_train.artifacts import RunDir
    original = RunDir.mark_done
    def mark_done(self, stage, info):
        original(self, stage, info)
        if stage == "sft":
            die()
    RunDir.mark_done = mark_done

from aya_train.cli import main
sys.exit(main(sys.argv[1:]))
'''

STEPS = 6


def _args(out: Path, cache_dir: Path) -> list:
    from .test_export import SMALL_DATA

    return ["recipe=demo", *quick_overrides(out, cache_dir, steps=STEPS, keep=("sft", "export")), SMALL_DATA,
            "stages.export.model=sft", "data.sft.eval_fraction=0", "stages.sft.save_steps=2",
            "stages.sft.logging_steps=1", "stages.sft.per_device_train_batch_size=4", "stages.sft.warmup_steps=0"]


def _start(driver: Path, args: list, kill_at: str = "") -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "KILL_AT": kill_at,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(driver), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> tuple:
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def _train_records(run_dir: Path) -> list:
    """metrics.jsonl without the wall-clock figures (runtime, throughput) and the train() summary, whose
    mean loss only covers the steps of the last train() call."""
    records = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "runtime" not in k and "per_second" not in k}
            for r in records if "train/train_loss" not in r]


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir, tiny_model, driver) -> Path:
    out = tmp_path_factory.mktemp("reference")
    code, output = _finish(_start(driver, _args(out, cache_dir)))
    assert code == 0, output[-3000:]
    return out / "demo"


@pytest.mark.slow  # two short subprocess runs per kill point, ~25 s each on 2 cores
@pytest.mark.parametrize("kill_at", ["data", "step:3", "save:4", "between", "external"])
def test_killed_run_resumes_to_the_same_model(tmp_path, cache_dir, driver, uninterrupted, kill_at):
    args = _args(tmp_path, cache_dir)
    run_dir = tmp_path / "demo"
    if kill_at == "external":  # kill -9 from outside, as soon as the first checkpoint is complete
        proc = _start(driver, args)
        deadline = time.time() + 300
        while not (run_dir / "sft" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.02)
        proc.kill()
        code, output = _finish(proc)
    else:
        code, output = _finish(_start(driver, args, kill_at))
    assert code == -9, output[-3000:]  # really killed, not finished
    checkpoints = run_dir / "sft" / "checkpoints"
    if kill_at == "data":
        assert not checkpoints.exists()
    if kill_at == "save:4":
        assert (checkpoints / "checkpoint-4").is_dir() and not (checkpoints / "checkpoint-4" / "trainer_state.json").exists()
    if kill_at == "between":
        assert (run_dir / "sft" / "DONE").is_file() and not (run_dir / "export" / "DONE").exists()
    if kill_at != "between":
        assert not (run_dir / "sft" / "DONE").exists()

    code, output = _finish(_start(driver, args))  # the same command again
    assert code == 0, output[-3000:]
    if kill_at in ("step:3", "save:4", "external"):
        assert "resume" in output and "checkpoint-" in output
    if kill_at == "between":
        assert "finished earlier with the same inputs" in output  # sft is not trained again
    for stage_file in ("sft/final/model.safetensors", "export/final/model.safetensors"):
        expected, got = load_file(uninterrupted / stage_file), load_file(run_dir / stage_file)
        assert expected.keys() == got.keys()
        for name in expected:
            assert torch.allclose(expected[name], got[name], rtol=1e-5, atol=1e-6), (stage_file, name)
    # the log reads as if the run had never stopped: same steps, same losses, nothing twice
    expected_log, got_log = _train_records(uninterrupted), _train_records(run_dir)
    assert [r["step"] for r in got_log] == [r["step"] for r in expected_log]
    for want, have in zip(expected_log, got_log):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (want["step"], key)
    assert (run_dir / "export" / "DONE").is_file() and (run_dir / "report.md").is_file()
