"""Launch files: every accelerate config is one accelerate accepts and opens with the exact command that uses
it (whose aya_train arguments compose); the SLURM script hands accelerate the node count, node rank and
rendezvous host from SLURM and passes the recipe arguments through unchanged. (cpu_ddp really running with
two processes is tests/test_distributed.py.)"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from aya_train.recipe import compose_recipe

from .conftest import REPO

LAUNCH = REPO / "launch"
CONFIGS = sorted((LAUNCH / "accelerate").glob("*.yaml"))
SLURM = LAUNCH / "slurm" / "multinode.sbatch"


def _header_commands(path: Path) -> list:
    """Commands in the opening comment block (lines `#   <command>`, continued with a trailing backslash)."""
    lines, commands, current = path.read_text().splitlines(), [], ""
    for line in lines:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if current or text.startswith(("accelerate launch", "sbatch", "DS_ACCELERATOR")):
            current += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


def test_every_launch_kind_is_there():
    assert {p.stem for p in CONFIGS} >= {"cpu_ddp", "ddp", "zero2", "zero3", "zero3_offload", "fsdp"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_parses_and_its_header_command_composes(path, tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    assert isinstance(yaml.safe_load(path.read_text()), dict)
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys are errors
    assert config.num_processes >= 1
    commands = _header_commands(path)
    assert commands and all(f"--config_file launch/accelerate/{path.name}" in c for c in commands), commands
    for command in commands:
        args = shlex.split(command)
        aya_args = args[args.index("aya_train") + 1:]
        cfg = compose_recipe(aya_args[0].split("=", 1)[1], aya_args[1:])
        assert cfg.stages


def _fake_slurm(tmp_path: Path) -> dict:
    """srun (runs its command once per node with SLURM_NODEID set), scontrol, and a python that records
    the accelerate command line it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'gpu-node-a\\ngpu-node-b\\n'\n")
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        "while [[ $1 == --* ]]; do shift; done\n"
        "for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id \"$@\" || exit $?; done\n")
    (bin_dir / "python-recorder").write_text(
        "#!/bin/bash\nprintf '%s\\n' \"$@\" > \"$RECORD_DIR/node-$SLURM_NODEID.args\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": "python-recorder",
            "RECORD_DIR": str(tmp_path), "SLURM_JOB_NODELIST": "gpu-node-[a-b]", "SLURM_NNODES": "2",
            "SLURM_SUBMIT_DIR": str(REPO), "GPUS_PER_NODE": "4"}


def test_slurm_script_derives_ranks_and_main_address_from_slurm(tmp_path):
    assert subprocess.run(["bash", "-n", str(SLURM)]).returncode == 0
    env = _fake_slurm(tmp_path)
    proc = subprocess.run(["bash", str(SLURM), "recipe=demo", "run.name=my run", "stages.sft.max_steps=10"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for node in (0, 1):
        args = (tmp_path / f"node-{node}.args").read_text().splitlines()
        options = dict(zip(args[::1], args[1::1]))
        assert args[:2] == ["-m", "accelerate.commands.launch"]
        assert options["--config_file"] == "launch/accelerate/zero3.yaml"
        assert options["--num_machines"] == "2" and options["--num_processes"] == "8"
        assert options["--machine_rank"] == str(node)
        assert options["--main_process_ip"] == "gpu-node-a" and options["--main_process_port"] == "29500"
        assert args[args.index("aya_train") + 1:] == ["recipe=demo", "run.name=my run", "stages.sft.max_steps=10"]


def test_slurm_script_outside_an_allocation_says_how_to_submit(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(SLURM), "recipe=demo"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "sbatch --nodes=N" in proc.stderr


def test_slurm_header_command_composes():
    (command,) = [c for c in _header_commands(SLURM) if c.startswith("sbatch")]
    args = shlex.split(command)
    recipe_args = args[args.index(str(SLURM.relative_to(REPO))) + 1:]
    assert compose_recipe(recipe_args[0].split("=", 1)[1], recipe_args[1:]).model.name_or_path == \
        "CohereLabs/aya-expanse-8b"
