"""The demo under `accelerate launch` with 2 CPU processes writes one run directory, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, quick_overrides


@pytest.mark.slow
def test_two_process_cpu_launch(tmp_path, cache_dir, tiny_model):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "launch/accelerate/cpu_ddp.yaml"), "--main_process_port", "29517", "-m", "aya_train",
           "recipe=demo", *quick_overrides(tmp_path, cache_dir, steps=6), "stages.sft.eval_steps=3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["demo"]  # one run dir, no per-rank dirs
    run_dir = tmp_path / "demo"
    assert (run_dir / "sft" / "DONE").is_file() and (run_dir / "sft" / "final" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in records if "eval/loss" in r]
    assert eval_steps == sorted(set(eval_steps)), "rank 1 must not write metrics too"
    assert eval_steps[0] == 0 and eval_steps[-1] == 6
    # both ranks took part: the Trainer saw a world size of 2
    state = json.loads(next((run_dir / "sft" / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == 6
    assert "processes=2" in proc.stdout + proc.stderr
