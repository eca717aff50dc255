"""A dry run shows the mixture plan before training and writes the data report (JSON + Markdown + PNG) into
the run directory, recorded in manifest.json; bad data and bad mixture settings exit 2 with a clear message."""

import json

import pytest

from aya_train.cli import main
from aya_train.data.prepare import mixture_report_dir


def common(tmp_path, cache_dir):
    return ["recipe=demo", f"run.output_dir={tmp_path}", f"run.cache_dir={cache_dir}"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, cache_dir, tiny_model):
    out = tmp_path_factory.mktemp("dry")
    assert main([*common(out, cache_dir), "run.dry_run=true"]) == 0
    return out / "demo"


def test_dry_run_writes_the_report_and_records_it(dry_run, capsys):
    folder = mixture_report_dir(dry_run, "sft")
    assert folder == dry_run / "data" / "sft"
    for name in ("mixture.json", "mixture.md", "mixture.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0
    manifest = json.loads((dry_run / "manifest.json").read_text())
    entry = manifest["data"]["sft"]
    assert entry["report"]["markdown"] == str(folder / "mixture.md")
    assert entry["kind"] == "conversation" and entry["quarantined"] == 0
    assert not (dry_run / "sft" / "DONE").exists()  # nothing trained


def test_demo_mixture_flattens_languages_within_the_cap(dry_run):
    report = json.loads((dry_run / "data" / "sft" / "mixture.json").read_text())
    assert report["unit"] == "examples" and report["budget"] == report["available_rows"]
    langs = report["languages"]
    smallest = min(langs, key=lambda k: langs[k]["train_rows"])
    largest = max(langs, key=lambda k: langs[k]["train_rows"])
    assert langs[smallest]["target_share"] > langs[smallest]["natural_share"]  # upsampled
    assert langs[largest]["target_share"] < langs[largest]["natural_share"]  # thinned
    for lang, v in langs.items():
        assert abs(v["realised_share"] - v["target_share"]) <= 0.005, lang
        assert v["epochs"] <= 4 + 1 / v["train_rows"] + 1e-9, lang  # max_epochs 4, to within one row
        assert v["tokens_per_char"] > 0 and 0 <= v["truncation_rate"] <= 1
    assert sum(g["sampled_rows"] for g in report["groups"]) == report["train_rows"]
    md = (dry_run / "data" / "sft" / "mixture.md").read_text()
    assert "| language | train rows | natural share | target share | realised share | epochs |" in md
    assert f"| {smallest} |" in md and "source x language x task" in md


def test_bad_rows_exit_2_or_are_quarantined(tmp_path, cache_dir, tiny_model, capsys):
    data = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "Bonjour !"}, {"role": "assistant", "content": "Salut !"}],
            "language": "fr"}
    data.write_text(json.dumps(good) + "\n" + '{"messages": [\n' + json.dumps(good) + "\n")
    args = [*common(tmp_path, cache_dir), "run.dry_run=true", f"data.sft.sources=[{{path: {data}}}]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "chats.jsonl:2: invalid JSON" in err and "Traceback" not in err
    assert main([*args, "data.sft.on_error=skip"]) == 0
    folder = tmp_path / "demo" / "data" / "sft"
    [entry] = [json.loads(line) for line in (folder / "quarantine.jsonl").read_text().splitlines()]
    assert entry["line"] == 2 and entry["category"] == "invalid JSON" and entry["raw"] == '{"messages": ['
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["data"]["sft"]["quarantined"] == 1
    assert manifest["data"]["sft"]["report"]["quarantine"] == str(folder / "quarantine.jsonl")
    assert "invalid JSON: 1" in (folder / "mixture.md").read_text()


@pytest.mark.parametrize("override, message", [
    ("data.sft.on_error=ignore", "data.sft.on_error: `ignore` is not one of raise, skip"),
    ("+data.sft.mixture.language.shares.en=1.5", "data.sft.mixture.language.shares must"),
    ("data.sft.mixture.unit=rows", "data.sft.mixture.unit must be one of examples, tokens"),
    ("data.sft.kind=preference", "data.sft.kind: kind is 'preference' but a source's format is a conversation"),
    ("data.sft.mixture.language.alfa=1", "unknown config key"),
])
def test_bad_data_config_exits_2_before_loading(tmp_path, cache_dir, override, message, capsys):
    assert main([*common(tmp_path, cache_dir), "run.dry_run=true", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_shares_from_the_shell(tmp_path, cache_dir, tiny_model, capsys):
    assert main([*common(tmp_path, cache_dir), "run.dry_run=true", "+data.sft.mixture.language.shares.en=0.5",
                 "data.sft.mixture.budget=2000"]) == 0
    out = capsys.readouterr().out
    assert "data set `sft`: mixture plan, 2,000 examples" in out and "50.00%" in out  # shown before training
    report = json.loads((tmp_path / "demo" / "data" / "sft" / "mixture.json").read_text())
    assert report["train_rows"] == 2000
    assert abs(report["languages"]["en"]["realised_share"] - 0.5) <= 0.005


def test_token_budget_through_the_run(tmp_path, cache_dir, tiny_model):
    """unit: tokens counts the model's chat template; the planned rows hold the budget to within one row."""
    assert main([*common(tmp_path, cache_dir), "run.dry_run=true", "data.sft.mixture.unit=tokens",
                 "data.sft.mixture.budget=60000", "data.sft.mixture.language.alpha=0.0",
                 "data.sft.mixture.language.max_epochs=null"]) == 0
    report = json.loads((tmp_path / "demo" / "data" / "sft" / "mixture.json").read_text())
    assert report["unit"] == "tokens" and all(g["tokens"] > 0 for g in report["groups"])
    from aya_train.pipeline import DataCache
    from aya_train.recipe import compose_recipe

    cfg = compose_recipe("demo", [*common(tmp_path, cache_dir)[1:], "data.sft.mixture.unit=tokens",
                                  "data.sft.mixture.budget=60000", "data.sft.mixture.language.alpha=0.0",
                                  "data.sft.mixture.language.max_epochs=null"])
    data = DataCache(cfg)("sft")
    used = int((data.plan.repeats * data.available_tokens).sum())
    assert abs(used - 60000) <= data.available_tokens.max()
    assert len(data.train_tokens) == data.train.num_rows and int(data.train_tokens.sum()) == used
    tok = DataCache(cfg).tokenizer()
    for i in range(0, data.train.num_rows, max(1, data.train.num_rows // 7)):  # aligned row by row
        ids = tok.apply_chat_template(data.train[i]["messages"], return_dict=True)["input_ids"]
        assert len(ids) == data.train_tokens[i]
    assert data.plan.digest == report["plan_digest"]  # the same plan in every process
    shares = report["languages"]
    assert all(abs(v["realised_share"] - 1 / len(shares)) <= 0.005 for v in shares.values())


def test_preference_sets_are_mixed_alike(tmp_path):
    from aya_train.config import DataSetConfig, MixtureConfig, MixtureLevelConfig, SourceConfig
    from aya_train.data.loading import load_data
    from aya_train.data.mixture import apply_mixture

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "language": lang}
            for lang, n in (("en", 90), ("sw", 10)) for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = DataSetConfig(sources=[SourceConfig(path=str(path), format="preference")], eval_fraction=0.0,
                       mixture=MixtureConfig(budget=200, language=MixtureLevelConfig(alpha=0.0)))
    data = load_data(ds, seed=0)
    apply_mixture(data, ds.mixture, seed=0)
    assert data.train.num_rows == 200 and data.train.column_names[:3] == ["prompt", "chosen", "rejected"]
    counts = {lang: data.train["language"].count(lang) for lang in ("en", "sw")}
    assert counts == {"en": 100, "sw": 100}  # sw's 10 pairs 10 times each


def test_a_set_with_no_good_rows_stops_with_exit_2(tmp_path, cache_dir, tiny_model, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text("not json\n")
    assert main([*common(tmp_path, cache_dir), "run.dry_run=true", f"data.sft.sources=[{{path: {data}}}]",
                 "data.sft.on_error=skip"]) == 2
    err = capsys.readouterr().err
    assert "data.sft: no training rows left (1 bad" in err and "quarantine.jsonl" in err


def test_a_share_for_an_absent_language_exits_2(tmp_path, cache_dir, tiny_model, capsys):
    assert main([*common(tmp_path, cache_dir), "run.dry_run=true", "+data.sft.mixture.language.shares.sw=0.2"]) == 2
    err = capsys.readouterr().err
    assert "data.sft.mixture.language.shares: no language `sw` in the data" in err and "Traceback" not in err
