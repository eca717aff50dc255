"""Config composition, overrides and each validation error: exit 2, the key named, before anything loads."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from aya_train.cli import main
from aya_train.stage_config import SFTStageConfig
from aya_train.errors import ConfigError
from aya_train.recipe import compose_recipe


def test_demo_composes_typed():
    cfg = compose_recipe("demo")
    assert OmegaConf.get_type(cfg.stages.sft) is SFTStageConfig
    assert cfg.stages.sft.kind == "sft" and cfg.stages.sft.batching == "auto"
    assert cfg.model.name_or_path == "tiny"
    assert cfg.data.sft.sources[0].format == "chatterbot"


def test_shell_overrides_reach_config():
    cfg = compose_recipe("demo", ["stages.sft.learning_rate=1e-4", "stages.sft.max_steps=7", "run.name=x"])
    assert cfg.stages.sft.learning_rate == 1e-4 and cfg.stages.sft.max_steps == 7 and cfg.run.name == "x"


def test_user_data_sources_override(tmp_path):
    f = tmp_path / "aya.jsonl"
    f.write_text('{"inputs": "hi", "targets": "hello", "language": "English", "language_code": "eng"}\n')
    cfg = compose_recipe("demo", [f"data.sft.sources=[{{path:{f},format:aya_dataset}}]"])
    assert cfg.data.sft.sources[0].path == str(f) and cfg.data.sft.sources[0].format == "aya_dataset"


def _exit_and_error(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("override, expected", [
    ("stages.sft.lerning_rate=1e-4", ["stages.sft.lerning_rate", "Did you mean `learning_rate`"]),
    ("run.nmae=x", ["run.nmae", "Did you mean `name`"]),
    ("stages.sft.max_steps=many", ["stages.sft.max_steps", "many"]),
    ("stages.sft.data=sfft", ["stages.sft.data", "Did you mean `sft`"]),
    ("stages.sft.init=base", ["stages.sft.init", "base"]),
    ("run.only=[sfd]", ["run.only", "Did you mean `sft`"]),
    ("+stages.sft.args.max_lenght=3", ["stages.sft.args.max_lenght", "SFTConfig", "max_length"]),
    ("+stages.sft.args.learning_rate=3", ["stages.sft.args.learning_rate", "stages.sft.learning_rate"]),
    ("data.sft.sources=[{path:/nonexistent/x.jsonl}]", ["data.sft.sources[0].path", "/nonexistent/x.jsonl"]),
    ("model.name_or_path=/nonexistent/model", ["model.name_or_path", "/nonexistent/model"]),
])
def test_bad_config_exits_2_naming_the_key(capsys, override, expected):
    code, err = _exit_and_error(capsys, "recipe=demo", override)
    assert code == 2
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err


def test_reference_to_later_or_unknown_stage(capsys):
    code, err = _exit_and_error(capsys, "recipe=demo", "+stage@stages.second=sft", "stages.second.data=sft",
                                "stages.sft.init=second")
    assert code == 2 and "stages.sft.init" in err and "later stage" in err
    code, err = _exit_and_error(capsys, "recipe=demo", "+stage@stages.second=sft", "stages.second.data=sft",
                                "stages.second.init=sfx")
    assert code == 2 and "stages.second.init" in err and "Did you mean `sft`" in err


def test_valid_reference_to_earlier_stage():
    cfg = compose_recipe("demo", ["+stage@stages.second=sft", "stages.second.data=sft", "stages.second.init=sft"])
    assert list(cfg.stages)[0] == "sft" and list(cfg.stages)[-1] == "second" and cfg.stages.second.init == "sft"


def test_unknown_recipe_suggests(capsys):
    code, err = _exit_and_error(capsys, "recipe=dmeo")
    assert code == 2 and "Did you mean `demo`" in err
    code, err = _exit_and_error(capsys)
    assert code == 2 and "recipe=demo" in err


def test_user_recipe_directory(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text(
        "defaults:\n  - /aya_train\n  - /model: tiny\n  - /data@data.chat: chatterbot\n"
        "  - /stage@stages.tune: sft\n  - _self_\nrun:\n  name: mine\nstages:\n  tune:\n    data: chat\n"
    )
    monkeypatch.setenv("AYA_TRAIN_RECIPES", str(tmp_path))
    cfg = compose_recipe("mine")
    assert cfg.run.name == "mine" and cfg.stages.tune.data == "chat"
    assert compose_recipe(str(tmp_path / "mine.yaml")).stages.tune.kind == "sft"


def test_config_error_is_raised_not_exit():
    with pytest.raises(ConfigError, match="run.name"):
        compose_recipe("demo", ["run.name=has/slash"])


def test_recipes_and_conf_work_from_an_installed_wheel_layout(tmp_path):
    """The wheel ships conf/ and recipes/ inside the package (pyproject force-include); composing must
    find them there, with no checkout around."""
    import shutil
    import subprocess
    import sys
    import tomllib

    from .conftest import REPO

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "force-include"]
    assert include["conf"] == "aya_train/_conf" and include["recipes"] == "aya_train/_recipes"
    site = tmp_path / "site"
    shutil.copytree(REPO / "aya_train", site / "aya_train", ignore=shutil.ignore_patterns("__pycache__"))
    for src, dest in include.items():
        shutil.copytree(REPO / src, site / dest)
    code = ("import aya_train.recipe as r; cfg = r.compose_recipe('demo'); "
            "print(r.conf_dir(), cfg.stages.sft.kind, cfg.model.name_or_path)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(site / "aya_train" / "_conf"), "sft", "tiny"]
