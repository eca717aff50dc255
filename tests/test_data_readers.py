"""Readers and presets turn any supported layout into canonical conversations, and name bad rows precisely."""

import json
import os

import pytest

from aya_train.config import DataSetConfig, SourceConfig
from aya_train.data.loading import DEMO_CORPUS, load_conversations
from aya_train.data.presets import UnknownPresetError, get_preset
from aya_train.data.readers import check_source, iter_rows, resolve_path
from aya_train.data.schema import DataError

USER_SW = "Habari yako? Ninafurahi kukuona leo rafiki yangu."
BOT_SW = "Nzuri sana, asante. Wewe je, habari za kazi?"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def load_rows(path, fmt="auto", **src):
    """All canonical rows of one source, nothing held out."""
    data = load_conversations(DataSetConfig(sources=[SourceConfig(path=str(path), format=fmt, **src)],
                                            eval_fraction=0.0), seed=0)
    assert data.eval.num_rows == 0
    return data.train.to_list()


AYA_ROWS = [
    {"inputs": USER_SW, "targets": BOT_SW, "language": "Swahili", "language_code": "swh",
     "annotation_type": "original-annotations", "user_id": "u1"},
    {"inputs": "Quelle est la capitale du Kenya ?", "targets": "Nairobi.", "language": "French",
     "language_code": "fra", "annotation_type": "re-annotations", "user_id": "u2"},
]
SHAREGPT_ROW = {"id": "conv-7", "conversations": [
    {"from": "system", "value": "You are terse."},
    {"from": "human", "value": "Hi there, who are you?"},
    {"from": "gpt", "value": "A helpful assistant."},
    {"from": "user", "value": "What can you do for me today?"},
    {"from": "model", "value": "Answer questions in many languages."},
]}
MESSAGES_ROW = {"messages": [{"role": "user", "content": "Bonjour !"}, {"role": "assistant", "content": "Salut !"}],
                "language": "fr", "task": "chat"}


def test_aya_dataset_preset(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "aya.jsonl", AYA_ROWS), "aya_dataset")
    assert [r["language"] for r in rows] == ["sw", "fr"]
    assert rows[0]["messages"] == [{"role": "user", "content": USER_SW}, {"role": "assistant", "content": BOT_SW}]
    assert {r["task"] for r in rows} == {"general"}  # annotation_type says how a row was made, not its task
    assert {r["source"] for r in rows} == {"aya"}
    assert len({r["id"] for r in rows}) == 2 and all(r["id"].startswith("aya:") for r in rows)
    assert not any(r["language_inferred"] for r in rows)


def test_sharegpt_preset_keeps_system_and_all_turns(tmp_path):
    [row] = load_rows(write_jsonl(tmp_path / "sg.jsonl", [SHAREGPT_ROW]), "sharegpt", language="English")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][-1]["content"] == "Answer questions in many languages."
    assert row["language"] == "en" and row["id"] == "sg:conv-7"


def test_messages_preset_reads_language_and_task_from_the_row(tmp_path):
    [row] = load_rows(write_jsonl(tmp_path / "m.jsonl", [MESSAGES_ROW]), "messages", task="ignored", language="de")
    assert (row["language"], row["task"]) == ("fr", "chat")  # the row's own labels win over the source's


def test_custom_mapping_single_turn_and_messages(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Swali?", "a": "Jibu.", "lang": "swh", "key": 12}])
    [row] = load_rows(path, {"prompt": "q", "response": "a", "language": "lang", "id": "key"}, task="qa")
    assert row["messages"] == [{"role": "user", "content": "Swali?"}, {"role": "assistant", "content": "Jibu."}]
    assert (row["language"], row["task"], row["id"]) == ("sw", "qa", "qa:12")
    path = write_jsonl(tmp_path / "chat.jsonl", [{"dialog": MESSAGES_ROW["messages"]}])
    [row] = load_rows(path, {"messages": "dialog"}, language="fr")
    assert row["messages"] == MESSAGES_ROW["messages"]


def test_custom_mapping_is_checked_before_reading():
    with pytest.raises(UnknownPresetError, match="did you mean 'prompt'"):
        get_preset({"promt": "q", "response": "a"})
    with pytest.raises(UnknownPresetError, match="either `messages` or both"):
        get_preset({"prompt": "q"})


def test_auto_detects_each_layout(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [AYA_ROWS[0], SHAREGPT_ROW, MESSAGES_ROW])
    rows = load_rows(path, language="en")
    assert [len(r["messages"]) for r in rows] == [2, 5, 2]
    assert [r["language"] for r in rows] == ["sw", "en", "fr"]


def test_auto_names_the_keys_it_found(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "?", "answer": "!"}])
    with pytest.raises(DataError) as err:
        load_rows(path)
    message = str(err.value)
    assert "odd.jsonl:1" in message and "answer, question" in message and "sharegpt" in message


def test_unknown_preset_suggests_a_close_name(tmp_path):
    with pytest.raises(UnknownPresetError, match="did you mean 'sharegpt'"):
        get_preset("sharegtp")
    with pytest.raises(UnknownPresetError, match="aya_dataset"):
        check_source(SourceConfig(path=str(tmp_path), format="nope"))


def test_json_parquet_csv_and_folder_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(AYA_ROWS), encoding="utf-8")
    (folder / "b.json").write_text(json.dumps({"data": [MESSAGES_ROW]}), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([SHAREGPT_ROW]), str(folder / "c.parquet"))
    (folder / "d.csv").write_text("inputs,targets,language_code\nHello?,Hi!,en\n", encoding="utf-8")
    (folder / "README.md").write_text("not data")
    locations = [loc for loc, _ in iter_rows(SourceConfig(path=str(folder)))]
    assert [os.path.basename(loc) for loc in locations] == [
        "a.json[row 0]", "a.json[row 1]", "b.json[row 0]", "c.parquet[row 0]", "d.csv[row 0]"]
    rows = load_rows(folder, language="en")
    assert [r["language"] for r in rows] == ["sw", "fr", "fr", "en", "en"]
    assert [len(r["messages"]) for r in rows] == [2, 2, 2, 5, 2]
    assert {r["source"] for r in rows} == {"folder"}


def test_saved_datasets_dir(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list([MESSAGES_ROW]).save_to_disk(str(tmp_path / "single"))
    DatasetDict({"train": Dataset.from_list(AYA_ROWS), "test": Dataset.from_list([MESSAGES_ROW])}).save_to_disk(
        str(tmp_path / "dict"))
    assert load_rows(tmp_path / "single")[0]["messages"] == MESSAGES_ROW["messages"]
    assert [r["language"] for r in load_rows(tmp_path / "dict", split="train")] == ["sw", "fr"]
    assert [r["task"] for r in load_rows(tmp_path / "dict", split="test")] == ["chat"]
    with pytest.raises(DataError, match="split 'validation' not found; splits: train, test"):
        load_rows(tmp_path / "dict", split="validation")


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "file.jsonl"
    path.write_text(json.dumps(MESSAGES_ROW) + "\n\n" + '{"messages": [\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert "file.jsonl:3" in str(err.value) and "invalid JSON" in str(err.value)
    assert err.value.location.endswith("file.jsonl:3")
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"file\.jsonl:1: expected one JSON object per line, got list"):
        load_rows(path)


@pytest.mark.parametrize(
    "messages, reason",
    [
        ([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}], "'user' was expected"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "empty or non-text content"),
        ([{"role": "user", "content": "Hi"}], "ends with a user turn"),
        ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}], "role 'bot'"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a\x00b"}], "NUL byte"),
        ([{"role": "system", "content": "Be kind"}], "no user/assistant turns"),
        ([], "non-empty list"),
    ],
)
def test_bad_conversation_names_row_and_reason(tmp_path, messages, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [MESSAGES_ROW, {"messages": messages, "language": "en"}])
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert err.value.location.endswith("bad.jsonl:2")
    assert reason in err.value.reason
    assert "hint:" in str(err.value)


def test_bad_row_language_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "lang.jsonl", [dict(MESSAGES_ROW, language="Klingonish")])
    with pytest.raises(DataError, match=r"lang\.jsonl:1: unknown language 'Klingonish'; did you mean 'klingon'"):
        load_rows(path)


def test_language_falls_back_to_source_then_identification(tmp_path):
    rows = [{"messages": [{"role": "user", "content": USER_SW}, {"role": "assistant", "content": BOT_SW}]}]
    [row] = load_rows(write_jsonl(tmp_path / "a.jsonl", rows), language="swh")
    assert (row["language"], row["language_inferred"], row["language_confidence"]) == ("sw", False, 1.0)
    [row] = load_rows(tmp_path / "a.jsonl")
    assert (row["language"], row["language_inferred"], row["task"]) == ("sw", True, "general")
    assert 0.5 < row["language_confidence"] <= 1.0  # how sure the offline identification was


def test_ids_are_stable_and_unique(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [MESSAGES_ROW, MESSAGES_ROW, AYA_ROWS[0]])
    first, second = load_rows(path), load_rows(path)
    assert [r["id"] for r in first] == [r["id"] for r in second]
    assert len({r["id"] for r in first}) == 3 and first[1]["id"] == first[0]["id"] + "#2"


def test_check_source_is_a_cheap_preflight(tmp_path):
    check_source(SourceConfig(path=DEMO_CORPUS, format="chatterbot"))
    check_source(SourceConfig(path="CohereLabs/aya_dataset"))  # hub id: not contacted
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        check_source(SourceConfig(path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(FileNotFoundError, match="data/missing.jsonl"):
        check_source(SourceConfig(path="data/missing.jsonl"))  # owner/name-shaped, but a file name
    with pytest.raises(FileNotFoundError, match="no_such_module"):
        check_source(SourceConfig(path="pkg://no_such_module/data"))
    with pytest.raises(ValueError, match="Klingonish"):
        check_source(SourceConfig(path=str(tmp_path), language="Klingonish"))


def test_resolve_path():
    assert resolve_path("~/x.jsonl") == os.path.expanduser("~/x.jsonl")
    corpus = resolve_path(DEMO_CORPUS)
    assert os.path.isdir(os.path.join(corpus, "english"))


def test_yaml_needs_the_chatterbot_format(tmp_path):
    (tmp_path / "english").mkdir()
    path = tmp_path / "english" / "greetings.yml"
    path.write_text("conversations:\n- - Hi\n  - Hello\n", encoding="utf-8")
    with pytest.raises(DataError, match="format: chatterbot"):
        load_rows(path)
    [row] = load_rows(path, "chatterbot")
    assert (row["language"], row["task"]) == ("en", "greetings")  # language from the folder, task from the file


def test_chatterbot_over_the_installed_corpus():
    data = load_conversations(DataSetConfig(sources=[SourceConfig(path=DEMO_CORPUS, format="chatterbot")]), seed=0)
    summary = data.summary
    languages = set(summary.train)
    assert len(languages) >= 25 and {"en", "zh", "yo", "hi", "or", "fa"} <= languages
    assert "hinglish" not in languages
    assert "greetings" in summary.train["en"] and "ai" in summary.train["zh"]  # tasks are the file categories
    assert summary.excluded["code-mixed Hindi-English (hinglish) in Latin script"] > 0
    assert summary.adjusted["dropped a trailing unanswered user turn"] > 0
    assert set(data.train["source"]) == {"chatterbot_corpus"}
    # Every row read is accounted for: loaded, or excluded with a reason.
    total = len(list(iter_rows(SourceConfig(path=DEMO_CORPUS, format="chatterbot"))))
    assert data.train.num_rows + data.eval.num_rows + sum(summary.excluded.values()) == total


def test_chatterbot_conversation_shapes(tmp_path):
    folder = tmp_path / "corpus" / "swahili"
    folder.mkdir(parents=True)
    (folder / "chat.yml").write_text(
        "categories:\n- chat\nconversations:\n- - Habari?\n  - Nzuri.\n  - Asante.\n- - Peke yake\n- - yes\n  - no\n",
        encoding="utf-8")
    data = load_conversations(DataSetConfig(sources=[SourceConfig(path=str(tmp_path / "corpus"),
                                                                  format="chatterbot")], eval_fraction=0), seed=0)
    rows = data.train.to_list()
    assert [[m["content"] for m in r["messages"]] for r in rows] == [["Habari?", "Nzuri."], ["yes", "no"]]
    assert {r["language"] for r in rows} == {"sw"}
    assert data.summary.excluded == {"chatterbot conversation has a single turn and no answer": 1}
    assert data.summary.adjusted == {"dropped a trailing unanswered user turn": 1}
