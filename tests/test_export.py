"""Export: the folder loads with AutoModelForCausalLM / AutoTokenizer and generates, weights are sharded
safetensors, LoRA adapters are merged, the model card tells the whole story, and a dry-run push lists the
files without touching the network or writing the token anywhere."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

from aya_train.cli import main
from aya_train.errors import ConfigError
from aya_train.recipe import compose_recipe

from .conftest import quick_overrides

TOKEN = "hf_SECRETsentinel0123456789"
# Three languages of the demo corpus: enough for per-language tables, fast enough for a test.
SMALL_DATA = ("data.sft.sources=[{path: 'pkg://chatterbot_corpus/data/yoruba', format: chatterbot},"
              "{path: 'pkg://chatterbot_corpus/data/hindi', format: chatterbot},"
              "{path: 'pkg://chatterbot_corpus/data/french', format: chatterbot}]")

# The demo's SFT stage exported directly (its reward / DPO / RL stages are left out).
SFT_ONLY = ("stages.export.model=sft",)
KEEP = ("sft", "export")


def _no_network(*args, **kwargs):
    raise AssertionError("the export touched the network")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs")
    args = ["recipe=demo", *quick_overrides(out, cache_dir, steps=6, keep=KEEP), SMALL_DATA, "stages.sft.eval_steps=6",
            *SFT_ONLY,
            "stages.export.max_shard_size=1MB", "stages.export.hub_dry_run=true",
            "stages.export.hub_model_id=someone/aya-demo-test", "stages.export.hub_revision=v1",
            "stages.export.hub_private_repo=false", "stages.export.generation.max_new_tokens=16", "+stages.export.generation.do_sample=false"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        assert main(args) == 0
    return out / "demo"


def _front_matter(readme: Path) -> tuple[dict, str]:
    text = readme.read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


@pytest.mark.slow
def test_export_round_trip_loads_and_generates(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = exported / "export" / "final"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tok.chat_template and tok.chat_template == AutoTokenizer.from_pretrained(exported / "sft" / "final").chat_template
    inputs = tok.apply_chat_template([{"role": "user", "content": "Bawo ni?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    output = model.generate(**inputs)  # generation_config.json: 16 new tokens, greedy, stops at <|im_end|>
    assert inputs["input_ids"].shape[1] < output.shape[1] <= inputs["input_ids"].shape[1] + 16
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # the same weights as the trained stage
    trained = AutoModelForCausalLM.from_pretrained(exported / "sft" / "final")
    for (name, a), (_, b) in zip(trained.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_weights_are_sharded_safetensors(exported):
    folder = exported / "export" / "final"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((folder / s).is_file() and s.endswith(".safetensors") for s in shards)
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


@pytest.mark.slow
def test_model_card_metadata_and_contents(exported):
    meta, body = _front_matter(exported / "export" / "final" / "README.md")
    assert meta["language"] == ["fr", "hi", "yo"]
    assert meta["license"] == "apache-2.0"
    assert {"aya-train", "multilingual", "sft", "demo"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert "base_model" not in meta  # the tiny model is no hub repository; the body says what it is
    assert [s["stage"] for s in meta["lineage"]] == ["sft"]
    manifest = json.loads((exported / "manifest.json").read_text())
    assert meta["lineage"][0]["fingerprint"] == manifest["stages"]["sft"]["fingerprint"]
    assert meta["lineage"][0]["data_fingerprint"] == manifest["stages"]["sft"]["data_fingerprint"]
    assert "built-in tiny" in body and "someone/aya-demo-test" in body
    # the per-language results of the run: one row per language with first and last eval loss
    table = json.loads((exported / "sft" / "languages.json").read_text())
    for lang, row in table.items():
        assert f"| {lang} | {row['rows']} | {row['tokens']} | {row['first_eval_loss']:.3f} | " \
               f"{row['last_eval_loss']:.3f} |" in body
    assert "pkg://chatterbot_corpus/data/yoruba" in body and "learning_rate=0.003" in body


def test_card_includes_the_mixture_table_and_hub_metadata(tmp_path):
    from aya_train.card import card_metadata, model_card
    from aya_train.pipeline import run_dir_for

    cfg = compose_recipe("demo", [f"run.output_dir={tmp_path}", "model.name_or_path=CohereLabs/aya-expanse-8b",
                                  "data.sft.sources=[{path: CohereLabs/aya_dataset, format: aya_dataset}]",
                                  "stages.export.license=cc-by-nc-4.0"])
    run_dir = run_dir_for(cfg)
    mixture = "| source | language | task | share |\n|---|---|---|---|\n| aya_dataset | sw | chat | 0.25 |"
    (run_dir.root / "data" / "sft").mkdir(parents=True)
    (run_dir.root / "data" / "sft" / "mixture.md").write_text(mixture)
    (run_dir.stage_dir("sft")).mkdir()
    (run_dir.stage_dir("sft") / "languages.json").write_text(json.dumps({"sw": {"rows": 4}, "all": {"rows": 4}}))
    card = model_card(cfg, run_dir, "sft", cfg.stages.export, None)
    assert mixture in card
    meta = card_metadata(cfg, run_dir, "sft", cfg.stages.export, ["sw"])
    assert meta["base_model"] == "CohereLabs/aya-expanse-8b" and meta["datasets"] == ["CohereLabs/aya_dataset"]
    assert meta["license"] == "cc-by-nc-4.0" and meta["language"] == ["sw"]


@pytest.mark.slow
def test_dry_run_push_lists_the_files_and_never_writes_the_token(exported):
    folder = exported / "export" / "final"
    plan = json.loads((exported / "export" / "upload_plan.json").read_text())
    assert plan["repo_id"] == "someone/aya-demo-test" and plan["revision"] == "v1" and plan["private"] is False
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert [f["path"] for f in plan["files"]] == on_disk
    assert {"README.md", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json"} <= set(on_disk)
    for path in exported.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_uses_huggingface_hub_with_repo_private_and_revision(tmp_path, monkeypatch):
    """The real push path, with huggingface_hub's client replaced by a recorder (no network in tests)."""
    import huggingface_hub

    from aya_train.stages import export
    from aya_train.stages.common import StageContext

    calls = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            assert not args and not kwargs, "the token must come from huggingface_hub's own lookup"

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def create_branch(self, repo_id, **kw):
            calls.append(("create_branch", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], kw))
            return type("Info", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    cfg = compose_recipe("demo", [f"run.output_dir={tmp_path}", "stages.export.hub_model_id=me/m",
                                  "stages.export.hub_revision=v2"])
    from aya_train.pipeline import run_dir_for

    ctx = StageContext("export", cfg.stages.export, cfg, run_dir_for(cfg), "", None, None)
    result = export.push(ctx, [])
    assert calls[0] == ("create_repo", "me/m", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1] == ("create_branch", "me/m", {"branch": "v2", "exist_ok": True})
    assert calls[2][2]["revision"] == "v2" and calls[2][2]["folder_path"].endswith("export/final")
    assert "token" not in calls[2][2]
    assert result["pushed"]["commit_url"] == "https://hub/commit/1"


def test_push_without_a_token_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no cached login
    args = ["recipe=demo", f"run.output_dir={tmp_path}", "stages.export.push_to_hub=true",
            "stages.export.hub_model_id=me/m"]
    assert main(args) == 2
    assert "hf auth login" in capsys.readouterr().err
    assert main(args[:-1]) == 2  # no repository id
    with pytest.raises(ConfigError, match="not GenerationConfig fields: temprature"):
        compose_recipe("demo", ["+stages.export.generation.temprature=0.7"])
    with pytest.raises(ConfigError, match="stages.export.generation: .*do_sample"):
        compose_recipe("demo", ["+stages.export.generation.temperature=0.7"])
    with pytest.raises(ConfigError, match="max_shard_size"):
        compose_recipe("demo", ["stages.export.max_shard_size=lots"])


@pytest.mark.slow
def test_lora_adapter_is_merged_into_the_exported_weights(tmp_path, cache_dir):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    args = ["recipe=demo", *quick_overrides(tmp_path, cache_dir, steps=2, keep=KEEP), SMALL_DATA, "data.sft.eval_fraction=0",
            *SFT_ONLY,
            "stages.sft.lora.enabled=true", "stages.sft.lora.r=4"]
    assert main(args) == 0
    adapter_dir = tmp_path / "demo" / "sft" / "final"
    folder = tmp_path / "demo" / "export" / "final"
    assert (adapter_dir / "adapter_config.json").is_file()
    assert not list(folder.glob("adapter_*")) and (folder / "model.safetensors").is_file()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        expected = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


@pytest.mark.slow
def test_run_report_has_every_stage_with_its_language_table_and_plots(exported):
    report = (exported / "report.md").read_text()
    assert "## Stage `sft` (sft)" in report and "## Stage `export` (export)" in report
    table = json.loads((exported / "sft" / "languages.json").read_text())
    for lang, row in table.items():
        assert f"| {lang} | {row['rows']} | {row['tokens']} |" in report
    assert "![eval_loss](sft/plots/eval_loss.png)" in report
    png = (exported / "sft" / "plots" / "eval_loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
