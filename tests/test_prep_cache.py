"""Tokenised SFT data is cached by fingerprint: a rerun (or another stage on the same data) never tokenises again,
reads back exactly what trl prepared, and anything that changes the tokens changes the key."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from aya_train.cli import main
from aya_train.data import collect
from aya_train.modeling import load_model, load_tokenizer
from aya_train.recipe import compose_recipe
from aya_train.stages import sft
from aya_train.data.tokens import ASSISTANT_MASKS, INPUT_IDS, token_stats
from aya_train.stages.prep_cache import PreparedDataCache, TokenStatsCache, prepared_key, tokenizer_fingerprint
from aya_train.stages.sft import AyaSFTTrainer, with_token_columns

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


def _trainer(model_path, out, cache, data=None, tok=None, **overrides):
    cfg = compose_recipe("demo")
    tok = tok or load_tokenizer(cfg.model, model_path)
    args = SFTConfig(output_dir=str(out), assistant_only_loss=overrides.pop("assistant_only_loss", True),
                     max_length=overrides.pop("max_length", 256), report_to="none", use_cpu=True, bf16=False,
                     **overrides)
    data = data if data is not None else Dataset.from_dict({"messages": CONVERSATIONS})
    return AyaSFTTrainer(model=load_model(cfg.model, model_path), args=args, train_dataset=data,
                         processing_class=tok, prepared_cache=cache)


@pytest.mark.parametrize("assistant_only_loss,packing", [(True, False), (False, False), (True, True)])
def test_rows_tokenised_by_the_loader_are_what_trl_prepares_and_trl_does_not_tokenise(
        tiny_model, tmp_path, monkeypatch, assistant_only_loss, packing):
    tok = load_tokenizer(compose_recipe("demo").model, tiny_model)
    keep = (INPUT_IDS, ASSISTANT_MASKS) if assistant_only_loss else (INPUT_IDS,)
    encoded = token_stats([{"messages": m} for m in CONVERSATIONS], "conversation", tok, keep=keep).encoded
    rows = Dataset.from_dict({"messages": CONVERSATIONS})
    given = with_token_columns(rows, encoded, assistant_only_loss)
    assert given.column_names == ["messages", *keep]
    fresh = _trainer(tiny_model, tmp_path / "a", None, tok=tok, assistant_only_loss=assistant_only_loss,
                     packing=packing)  # trl tokenises the messages itself
    rendered = []
    original = tok.apply_chat_template
    monkeypatch.setattr(tok, "apply_chat_template", lambda conversation, *a, **k: (
        rendered.append(conversation), original(conversation, *a, **k))[1])
    cache = PreparedDataCache(tmp_path / "cache")
    built = _trainer(tiny_model, tmp_path / "b", cache, data=given, tok=tok, assistant_only_loss=assistant_only_loss,
                     packing=packing)
    assert not any(c in CONVERSATIONS for c in rendered)  # trl took the loader's tokens (it renders only its probe)
    assert built.train_dataset.to_dict() == fresh.train_dataset.to_dict()
    # keyed by the rows alone: a rerun without the token columns (statistics read from the cache) hits the entry
    again = _trainer(tiny_model, tmp_path / "c", cache, data=rows, tok=tok, assistant_only_loss=assistant_only_loss,
                     packing=packing)
    assert cache.hits == cache.misses and len(cache.misses) == 1
    assert again.train_dataset.to_dict() == fresh.train_dataset.to_dict()


def test_rows_without_an_assistant_token_are_left_to_trl(tiny_model):
    tok = load_tokenizer(compose_recipe("demo").model, tiny_model)
    conversations = [*CONVERSATIONS, [{"role": "user", "content": "no reply"}]]
    keep = (INPUT_IDS, ASSISTANT_MASKS)
    encoded = token_stats([{"messages": m} for m in conversations], "conversation", tok, keep=keep).encoded
    rows = Dataset.from_dict({"messages": conversations})
    assert with_token_columns(rows, encoded, True).column_names == ["messages"]  # trl raises its own error
    assert with_token_columns(rows, encoded, False).column_names == ["messages", INPUT_IDS]


def test_kept_token_columns_follow_the_rows_through_split_drop_and_mixture(tiny_model, tmp_path):
    from aya_train.config import DataSetConfig, MixtureConfig, MixtureLevelConfig, SourceConfig
    from aya_train.data.loading import load_data
    from aya_train.data.mixture import apply_mixture

    tok = load_tokenizer(compose_recipe("demo").model, tiny_model)
    path = tmp_path / "rows.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{word} {i}"}, {"role": "assistant", "content": word * (i % 7)}],
             "language": lang} for lang, word, n in (("en", "yes ", 60), ("sw", "ndiyo ", 12)) for i in range(1, n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = DataSetConfig(sources=[SourceConfig(path=str(path))], eval_fraction=0.2, over_length="drop",
                       on_error="skip", mixture=MixtureConfig(budget=150, language=MixtureLevelConfig(alpha=0.0)))
    data = load_data(ds, seed=0, tokenizer=tok, max_length=40, keep=(INPUT_IDS, ASSISTANT_MASKS))
    apply_mixture(data, ds.mixture, seed=0)
    assert data.summary.quarantined["total"] > 0  # some rows over max_length were dropped
    for split, encoded in ((data.train, data.train_encoded), (data.eval, data.eval_encoded)):
        assert encoded.num_rows == split.num_rows > 0
        expected = tok.apply_chat_template(list(split["messages"]), return_dict=True, return_assistant_tokens_mask=True)
        assert encoded.column(INPUT_IDS).to_pylist() == expected[INPUT_IDS]
        assert encoded.column(ASSISTANT_MASKS).to_pylist() == expected[ASSISTANT_MASKS]
    assert data.train.num_rows == 150  # sw rows repeated by the mixture, their tokens with them


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
