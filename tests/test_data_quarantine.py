"""Every bad row either stops the load naming file, line and reason (on_error: raise) or is quarantined with
its raw content and counted per reason (on_error: skip); good rows around it are kept either way."""

import json

import pytest

from aya_train.config import DataSetConfig, SourceConfig
from aya_train.data import schema
from aya_train.data.loading import load_data
from aya_train.data.quarantine import Quarantine, split_location
from aya_train.data.schema import DataError

GOOD = {"messages": [{"role": "user", "content": "Bonjour !"}, {"role": "assistant", "content": "Salut !"}],
        "language": "fr"}
PAIR = {"prompt": "Quelle est la capitale du Kenya ?", "chosen": "Nairobi.", "rejected": "Mombasa.", "language": "fr"}
AYA = {"inputs": "Swali?", "targets": "Jibu.", "language_code": "swh"}
FR = "Je voudrais réserver une table pour deux personnes ce soir, s'il vous plaît."
EN = "I would like to book a table for two people tonight, please, near the window."


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs], "language": "fr"}


# (case id, kind, bad line as raw text, category)
CASES = [
    ("invalid_json", "conversation", '{"messages": [', schema.INVALID_JSON),
    ("not_an_object", "conversation", "[1, 2]", schema.NOT_AN_OBJECT),
    ("missing_field", "conversation", json.dumps({"language": "fr"}), schema.UNKNOWN_LAYOUT),
    ("missing_field_preset", "conversation_aya", json.dumps({"inputs": "Swali?"}), schema.MISSING_FIELD),
    ("empty_messages", "conversation", json.dumps({"messages": []}), schema.MISSING_FIELD),
    ("wrong_type", "conversation", json.dumps({"messages": "hello"}), schema.WRONG_TYPE),
    ("unknown_role", "conversation", json.dumps(msgs(("user", "Hi"), ("bot", "Yo"))), schema.BAD_ROLES),
    ("broken_order", "conversation", json.dumps(msgs(("assistant", "Hi"), ("user", "Yo"))), schema.BAD_ROLES),
    ("empty_assistant", "conversation", json.dumps(msgs(("user", "Hi"), ("assistant", "  "))), schema.EMPTY_TURN),
    ("nul_escaped", "conversation", json.dumps(msgs(("user", "Hi"), ("assistant", "a\x00b"))), schema.NUL_BYTE),
    ("nul_raw", "conversation", '{"messages": "a\x00"}', schema.NUL_BYTE),
    ("unknown_language", "conversation", json.dumps(dict(GOOD, language="Klingonish")), schema.UNKNOWN_LANGUAGE),
    ("chosen_equals_rejected", "preference", json.dumps(dict(PAIR, rejected=" Nairobi. ")),
     schema.CHOSEN_EQUALS_REJECTED),
    ("pair_missing_rejected", "preference", json.dumps({"prompt": "Hi", "chosen": "Yo"}), schema.MISSING_FIELD),
    ("pair_other_prompt", "preference", json.dumps({
        "chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "B"}],
        "rejected": [{"role": "user", "content": "C?"}, {"role": "assistant", "content": "D"}]}), schema.BAD_ROLES),
    ("language_mismatch", "preference_drop", json.dumps({"prompt": FR, "chosen": FR + " Merci.", "rejected": EN}),
     schema.LANGUAGE_MISMATCH),
]


def data_set(tmp_path, kind, bad_line, on_error):
    good = PAIR if kind.startswith("preference") else AYA if kind == "conversation_aya" else GOOD
    path = tmp_path / "rows.jsonl"
    with open(path, "wb") as f:
        f.write((json.dumps(good) + "\n").encode())
        f.write(bad_line.encode("utf-8") + b"\n")
        f.write((json.dumps(dict(good, id="third")) + "\n").encode())
    fmt = "aya_dataset" if kind == "conversation_aya" else "auto"
    return DataSetConfig(sources=[SourceConfig(path=str(path), format=fmt, language="fr")], eval_fraction=0.0,
                         kind="preference" if kind.startswith("preference") else "conversation",
                         on_error=on_error, language_mismatch="drop" if kind == "preference_drop" else "warn")


@pytest.mark.parametrize("case, kind, bad_line, category", CASES, ids=[c[0] for c in CASES])
def test_raise_mode_stops_at_the_bad_row(tmp_path, case, kind, bad_line, category):
    with pytest.raises(DataError) as err:
        load_data(data_set(tmp_path, kind, bad_line, "raise"), seed=0)
    assert err.value.location.endswith("rows.jsonl:2") and err.value.category == category
    assert "rows.jsonl:2" in str(err.value) and "hint:" in str(err.value)


# Lenient mode keeps a row with an unknown language code (identified from the text): see the test below.
SKIPPED = [c for c in CASES if c[0] != "unknown_language"]


@pytest.mark.parametrize("case, kind, bad_line, category", SKIPPED, ids=[c[0] for c in SKIPPED])
def test_skip_mode_quarantines_the_row_and_keeps_the_rest(tmp_path, case, kind, bad_line, category):
    ds = data_set(tmp_path, kind, bad_line, "skip")
    quarantine = Quarantine("skip", tmp_path / "run" / "quarantine.jsonl")
    data = load_data(ds, seed=0, quarantine=quarantine)
    assert data.train.num_rows == 2  # both good rows kept
    [entry] = [json.loads(line) for line in (tmp_path / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert entry["file"].endswith("rows.jsonl") and entry["line"] == 2 and entry["category"] == category
    assert entry["reason"] and entry["raw"] is not None
    assert data.summary.quarantined["by_reason"] == {category: 1}
    assert data.summary.quarantined["total"] == 1


def test_invalid_utf8_in_both_modes(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": "\xff\xfe"}\n')
    ds = DataSetConfig(sources=[SourceConfig(path=str(path))], eval_fraction=0.0)
    with pytest.raises(DataError, match=r"bytes\.jsonl:2: not valid UTF-8"):
        load_data(ds, seed=0)
    ds.on_error = "skip"
    quarantine = Quarantine("skip")
    data = load_data(ds, seed=0, quarantine=quarantine)
    assert data.train.num_rows == 1
    [entry] = quarantine.entries
    assert entry["category"] == schema.INVALID_UTF8 and "\\xff" in entry["raw"]


def test_unknown_language_is_identified_in_lenient_mode(tmp_path):
    path = tmp_path / "lang.jsonl"
    row = {"messages": [{"role": "user", "content": "Habari yako? Ninafurahi kukuona leo rafiki yangu."},
                        {"role": "assistant", "content": "Nzuri sana, asante. Wewe je, habari za kazi?"}],
           "language": "Klingonish"}
    path.write_text(json.dumps(row) + "\n")
    data = load_data(DataSetConfig(sources=[SourceConfig(path=str(path))], eval_fraction=0.0, on_error="skip"),
                     seed=0)
    [kept] = data.train.to_list()
    assert kept["language"] == "sw" and kept["language_inferred"]
    assert data.summary.adjusted == {"unknown language code, identified from the text": 1}


def test_language_mismatch_warn_keeps_and_counts(tmp_path):
    ds = data_set(tmp_path, "preference", json.dumps({"prompt": FR, "chosen": FR + " Merci.", "rejected": EN}),
                  "raise")
    data = load_data(ds, seed=0)
    assert data.train.num_rows == 3
    assert sum(v for k, v in data.summary.adjusted.items() if "different languages" in k) == 1
    ds.language_mismatch = "ignore"
    assert load_data(ds, seed=0).summary.adjusted == {}


def test_over_length_truncate_counts_and_drop_quarantines(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    long = msgs(("user", "Bonjour " * 200), ("assistant", "Salut !"))
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(long) + "\n")
    ds = DataSetConfig(sources=[SourceConfig(path=str(path))], eval_fraction=0.0)
    data = load_data(ds, seed=0, tokenizer=tok, max_length=64)
    assert data.train.num_rows == 2 and data.summary.over_length == {"fr": 1}
    assert data.train_tokens[1] > 64 >= data.train_tokens[0]
    ds.over_length = "drop"
    with pytest.raises(DataError, match=r"long\.jsonl:2: \d+ tokens after the chat template, over max_length 64"):
        load_data(ds, seed=0, tokenizer=tok, max_length=64)
    ds.on_error = "skip"
    quarantine = Quarantine("skip")
    data = load_data(ds, seed=0, tokenizer=tok, max_length=64, quarantine=quarantine)
    assert data.train.num_rows == 1 and data.summary.over_length == {"fr": 1}
    assert quarantine.by_language == {schema.OVER_LENGTH: {"fr": 1}}
    assert quarantine.entries[0]["line"] == 2


def test_split_location():
    assert split_location("/d/a.jsonl:12") == {"file": "/d/a.jsonl", "line": 12, "row": None}
    assert split_location("/d/a.parquet[row 3]") == {"file": "/d/a.parquet", "line": None, "row": 3}
    assert split_location("/d/saved[train][row 0]") == {"file": "/d/saved", "line": None, "row": 0}


def test_inferred_languages_are_summarised_with_confidence(tmp_path):
    path = tmp_path / "nolang.jsonl"
    row = {"messages": [{"role": "user", "content": "Habari yako? Ninafurahi kukuona leo rafiki yangu."},
                        {"role": "assistant", "content": "Nzuri sana, asante. Wewe je, habari za kazi?"}]}
    path.write_text(json.dumps(row) + "\n" + json.dumps(GOOD) + "\n")
    summary = load_data(DataSetConfig(sources=[SourceConfig(path=str(path))], eval_fraction=0.0), seed=0).summary
    assert summary.language_inferred == 1
    assert list(summary.inferred_by_language) == ["sw"] and summary.inferred_by_language["sw"]["rows"] == 1
    assert 0.5 < summary.inferred_by_language["sw"]["mean_confidence"] <= 1
