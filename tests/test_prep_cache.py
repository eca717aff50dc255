"""Tokenised SFT data is cached by fingerprint: a rerun (or another stage on the same data) never tokenises again,
reads back exactly what trl prepared, and anything that changes the tokens changes the key."""

from __future__ import annotations

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from aya_train.cli import main
from aya_train.data import collect
from aya_train.modeling import load_model, load_tokenizer
from aya_train.recipe import compose_recipe
from aya_train.stages import sft
from aya_train.data.tokens import token_stats
from aya_train.stages.prep_cache import PreparedDataCache, TokenStatsCache, prepared_key, tokenizer_fingerprint
from aya_train.stages.sft import AyaSFTTrainer

from .conftest import quick_overrides

CONVERSATIONS = [
    [{"role": "user", "content": "Habari yako?"}, {"role": "assistant", "content": "Nzuri sana, asante."}],
    [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Salut !"}],
    [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは！元気です。"}],
]


def _count_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.slow  # two short demo runs end to end (~40 s on 2 busy cores): the promise is about whole runs
def test_rerun_and_next_run_never_tokenise_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepared = _count_calls(monkeypatch, SFTTrainer, "_prepare_dataset")
    counted = _count_calls(monkeypatch, sft, "token_counts")
    measured = _count_calls(monkeypatch, collect, "token_stats")  # the data report's token counts
    first = ["recipe=demo", *quick_overrides(tmp_path / "runs", cache, steps=2), "run.name=first"]
    assert main(first) == 0
    assert prepared and measured  # train + every eval subset prepared once; rows measured for the data report
    entries = sorted(p.name for p in (cache / "prepared").iterdir())
    prepared.clear(), counted.clear(), measured.clear()

    # a new run on the same data, tokenizer, template and max length (other training settings differ)
    second = ["recipe=demo", *quick_overrides(tmp_path / "runs", cache, steps=3), "run.name=second",
              "stages.sft.learning_rate=1e-3"]
    assert main(second) == 0
    assert prepared == [] and counted == [] and measured == []
    assert sorted(p.name for p in (cache / "prepared").iterdir()) == entries
    first_table = (tmp_path / "runs" / "first" / "sft" / "languages.json").read_text()
    second_table = (tmp_path / "runs" / "second" / "sft" / "languages.json").read_text()
    assert '"tokens"' in second_table and first_table.count('"tokens"') == second_table.count('"tokens"')


def _trainer(model_path, out, cache, **overrides):
    cfg = compose_recipe("demo")
    tok = load_tokenizer(cfg.model, model_path)
    args = SFTConfig(output_dir=str(out), assistant_only_loss=True, max_length=overrides.pop("max_length", 256),
                     report_to="none", use_cpu=True, bf16=False, **overrides)
    data = Dataset.from_dict({"messages": CONVERSATIONS})
    return AyaSFTTrainer(model=load_model(cfg.model, model_path), args=args, train_dataset=data,
                         processing_class=tok, prepared_cache=cache)


@pytest.mark.parametrize("packing", [False, True])
def test_cached_rows_equal_what_trl_prepares(tiny_model, tmp_path, packing):
    fresh = _trainer(tiny_model, tmp_path / "a", None, packing=packing)
    cache = PreparedDataCache(tmp_path / "cache")
    built = _trainer(tiny_model, tmp_path / "b", cache, packing=packing)
    reread = _trainer(tiny_model, tmp_path / "c", cache, packing=packing)
    assert len(cache.misses) == 1 and cache.hits == cache.misses
    expected = fresh.train_dataset.to_dict()
    assert built.train_dataset.to_dict() == expected and reread.train_dataset.to_dict() == expected
    assert reread.train_dataset.cache_files  # read back memory-mapped, not held in memory


def test_key_changes_with_rows_tokenizer_template_and_settings(tiny_model):
    cfg = compose_recipe("demo")
    tok = load_tokenizer(cfg.model, tiny_model)
    rows = Dataset.from_dict({"messages": CONVERSATIONS})
    tok_fp = tokenizer_fingerprint(tok, None)
    settings = {"max_length": 256, "packing": False}
    key = prepared_key(rows, tok_fp, settings)
    assert key == prepared_key(Dataset.from_dict({"messages": CONVERSATIONS}), tok_fp, dict(settings))
    assert key != prepared_key(Dataset.from_dict({"messages": CONVERSATIONS[:2]}), tok_fp, settings)
    assert key != prepared_key(rows, tok_fp, {**settings, "max_length": 128})
    assert key != prepared_key(rows, tokenizer_fingerprint(tok, tok.chat_template.replace("<|im_start|>", "<s>")),
                               settings)
    tok.add_tokens(["<extra_token>"])
    assert tokenizer_fingerprint(tok, None) != tok_fp


def test_token_stats_are_measured_once_per_content(tiny_model, tmp_path):
    cfg = compose_recipe("demo")
    tok = load_tokenizer(cfg.model, tiny_model)
    records = [{"messages": conv, "language": "xx"} for conv in CONVERSATIONS]
    calls = []

    def compute(*args):
        calls.append(1)
        return token_stats(*args)

    cache = TokenStatsCache(tmp_path)
    first = cache(records, "conversation", tok, compute)
    again = TokenStatsCache(tmp_path)(records, "conversation", tok, compute)  # a new process, the same rows
    assert len(calls) == 1
    for name in ("tokens", "longest", "content_tokens", "chars", "words"):
        assert list(getattr(again, name)) == list(getattr(first, name))
    changed = [dict(records[0], messages=records[1]["messages"])] + records[1:]
    TokenStatsCache(tmp_path)(changed, "conversation", tok, compute)
    assert len(calls) == 2
