"""Every preset maps its layout to canonical records: Aya Collection, Alpaca, csv, preference pairs as strings,
as message lists and UltraFeedback-style conversations, and user mappings; the kind follows the format."""

import json

import pytest

from aya_train.config import DataSetConfig, SourceConfig
from aya_train.data.loading import data_set_kind, load_data
from aya_train.data.presets import PRESETS, UnknownPresetError, get_preset
from aya_train.data.preference import PREFERENCE_PRESETS
from aya_train.data.readers import READERS

Q_SW, A_SW = "Habari yako? Ninafurahi kukuona leo rafiki yangu.", "Nzuri sana, asante. Wewe je, habari za kazi?"


def load(tmp_path, rows, fmt="auto", kind=None, **src):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ds = DataSetConfig(sources=[SourceConfig(path=str(path), format=fmt, **src)], eval_fraction=0.0, kind=kind)
    return load_data(ds, seed=0)


def test_aya_collection_preset(tmp_path):
    row = {"id": 5, "inputs": Q_SW, "targets": A_SW, "dataset_name": "Mintaka-inst", "sub_dataset_name": "-",
           "task_type": "question-answering", "template_id": 1, "language": "swh", "script": "Latn", "split": "train"}
    for fmt in ("aya_collection", "auto"):
        data = load(tmp_path, [row], fmt)
        [rec] = data.train.to_list()
        assert (rec["language"], rec["task"], rec["source"], rec["id"]) == (
            "sw", "question-answering", "Mintaka-inst", "Mintaka-inst:5")
    # an explicit source name wins over the row's dataset_name
    [rec] = load(tmp_path, [row], "aya_collection", name="aya").train.to_list()
    assert rec["source"] == "aya"


def test_alpaca_preset(tmp_path):
    rows = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    data = load(tmp_path, rows, "alpaca", language="en")
    first, second = data.train.to_list()
    assert first["messages"] == [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                                 {"role": "assistant", "content": "Bonjour"}]
    assert second["messages"][0]["content"] == "Name a colour."
    assert [r["messages"] for r in load(tmp_path, rows, "auto", language="en").train.to_list()] == [
        first["messages"], second["messages"]]


def test_csv_with_a_mapping(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("swali,jibu,lugha\n\"Habari, yako?\",Nzuri.,swh\n", encoding="utf-8")
    ds = DataSetConfig(sources=[SourceConfig(path=str(path), format={"prompt": "swali", "response": "jibu",
                                                                      "language": "lugha"})], eval_fraction=0.0)
    [rec] = load_data(ds, seed=0).train.to_list()
    assert rec["messages"][0]["content"] == "Habari, yako?" and rec["language"] == "sw"


PROMPT = [{"role": "user", "content": Q_SW}]


@pytest.mark.parametrize("row", [
    {"prompt": Q_SW, "chosen": A_SW, "rejected": "Sijui."},  # strings
    {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": A_SW}],
     "rejected": [{"role": "assistant", "content": "Sijui."}]},  # message lists
    {"prompt": Q_SW, "chosen": PROMPT + [{"role": "assistant", "content": A_SW}],  # UltraFeedback binarized
     "rejected": PROMPT + [{"role": "assistant", "content": "Sijui."}], "prompt_id": "abc"},
    {"chosen": PROMPT + [{"role": "assistant", "content": A_SW}],  # no prompt: the shared turns are the prompt
     "rejected": PROMPT + [{"role": "assistant", "content": "Sijui."}]},
], ids=["strings", "message_lists", "ultrafeedback", "conversations_only"])
def test_preference_shapes_become_one_canonical_record(tmp_path, row):
    for fmt, kind in (("preference", None), ("auto", "preference")):
        data = load(tmp_path, [row], fmt, kind)
        assert data.kind == "preference"
        assert data.train.column_names == ["prompt", "chosen", "rejected", "language", "task", "source", "id",
                                           "language_inferred", "language_confidence"]
        [rec] = data.train.to_list()
        assert rec["prompt"] == PROMPT
        assert rec["chosen"] == [{"role": "assistant", "content": A_SW}]
        assert rec["rejected"] == [{"role": "assistant", "content": "Sijui."}]
        assert rec["language"] == "sw"


def test_preference_system_and_multi_turn_prompt(tmp_path):
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Capital of Kenya?"}]
    [rec] = load(tmp_path, [{"prompt": prompt, "chosen": "Nairobi.", "rejected": "Lagos.", "system": "Be brief.",
                             "language": "en", "task": "qa"}], "preference").train.to_list()
    assert [m["role"] for m in rec["prompt"]] == ["system", "user", "assistant", "user"]
    assert rec["task"] == "qa"


def test_preference_mapping(tmp_path):
    rows = [{"q": "Capital of Kenya?", "good": "Nairobi.", "bad": "Lagos.", "lang": "English"}]
    data = load(tmp_path, rows, {"prompt": "q", "chosen": "good", "rejected": "bad", "language": "lang"})
    assert data.kind == "preference"
    [rec] = data.train.to_list()
    assert rec["chosen"][0]["content"] == "Nairobi." and rec["language"] == "en"
    with pytest.raises(UnknownPresetError, match="must name `chosen` and `rejected`"):
        get_preset({"prompt": "q", "chosen": "good"}, "preference")


def test_kind_is_inferred_from_the_format_and_checked():
    src = lambda fmt: SourceConfig(path="x.jsonl", format=fmt)
    assert data_set_kind(DataSetConfig(sources=[src("auto")])) == "conversation"
    assert data_set_kind(DataSetConfig(sources=[src("preference")])) == "preference"
    assert data_set_kind(DataSetConfig(sources=[src("auto")], kind="preference")) == "preference"
    with pytest.raises(ValueError, match="kind is 'conversation' but a source's format is a preference layout"):
        data_set_kind(DataSetConfig(sources=[src("preference")], kind="conversation"))
    with pytest.raises(ValueError, match="mix conversation and preference"):
        data_set_kind(DataSetConfig(sources=[src("preference"), src("sharegpt")]))
    with pytest.raises(UnknownPresetError, match="is a conversation layout but the data set's kind is 'preference'"):
        get_preset("sharegpt", "preference")


def test_preference_rows_in_a_conversation_set_get_a_hint(tmp_path):
    from aya_train.data.schema import DataError

    with pytest.raises(DataError, match="set the data set's `kind: preference`"):
        load(tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}])


def test_registries_are_plain_dicts_to_extend(tmp_path):
    from aya_train.data.preference import MappedPair

    def reverse(row):  # a custom preference layout: {"q", "worse", "better"}
        return MappedPair([{"role": "user", "content": row["q"]}], [{"role": "assistant", "content": row["better"]}],
                          [{"role": "assistant", "content": row["worse"]}], language="en")

    PREFERENCE_PRESETS["reverse_test"] = reverse
    try:
        [rec] = load(tmp_path, [{"q": "2+2?", "worse": "5", "better": "4"}], "reverse_test").train.to_list()
        assert rec["chosen"][0]["content"] == "4"
    finally:
        del PREFERENCE_PRESETS["reverse_test"]
    assert "chatterbot" in PRESETS and "chatterbot" in READERS


def test_hub_ids_can_be_streamed(monkeypatch):
    """`streaming: true` hands datasets an iterable (no full download); rows arrive one by one."""
    import datasets

    calls = []

    def fake_load_dataset(path, split, streaming):
        calls.append((path, split, streaming))
        return iter([{"inputs": Q_SW, "targets": A_SW, "language_code": "swh"}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = DataSetConfig(sources=[SourceConfig(path="CohereLabs/aya_dataset", streaming=True)], eval_fraction=0.0)
    data = load_data(ds, seed=0)
    assert calls == [("CohereLabs/aya_dataset", "train", True)]
    assert data.train.num_rows == 3 and set(data.train["language"]) == {"sw"}
    assert data.train["source"][0] == "aya_dataset"
