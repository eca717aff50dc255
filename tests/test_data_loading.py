"""Loading splits every language deterministically, summarises what it read and fingerprints the result."""

import json

import pytest

from aya_train.config import DataSetConfig, SourceConfig
from aya_train.data.loading import DEMO_CORPUS, demo_corpus_texts, fingerprint, load_conversations, split_by_language


def conversation(i, language):
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
            "language": language}


@pytest.fixture
def dataset_config(tmp_path):
    # 40 English, 10 Swahili, 2 French, 1 Yoruba rows.
    rows = ([conversation(i, "en") for i in range(40)] + [conversation(100 + i, "swh") for i in range(10)]
            + [conversation(200 + i, "French") for i in range(2)] + [conversation(300, "yo")])
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return DataSetConfig(sources=[SourceConfig(path=str(path), task="qa")], eval_fraction=0.25,
                         max_eval_rows_per_language=4)


def test_split_is_deterministic_disjoint_and_per_language(dataset_config):
    first, second = load_conversations(dataset_config, seed=7), load_conversations(dataset_config, seed=7)
    assert first.eval["id"] == second.eval["id"] and first.train["id"] == second.train["id"]
    assert first.fingerprint == second.fingerprint
    assert not set(first.train["id"]) & set(first.eval["id"])
    assert first.train.num_rows + first.eval.num_rows == 53
    eval_counts = {lang: sum(tasks.values()) for lang, tasks in first.summary.eval.items()}
    # en: round(0.25 * 40) = 10, capped at 4; sw: round(2.5) = 3 (half up); fr: 2 rows -> 1; yo: 1 row -> 0.
    assert eval_counts == {"en": 4, "sw": 3, "fr": 1}
    assert first.summary.train == {"en": {"qa": 36}, "fr": {"qa": 1}, "sw": {"qa": 7}, "yo": {"qa": 1}}


def test_seed_changes_the_split_but_not_its_sizes(dataset_config):
    a, b = load_conversations(dataset_config, seed=1), load_conversations(dataset_config, seed=2)
    assert a.summary.eval == b.summary.eval
    assert set(a.eval["id"]) != set(b.eval["id"])
    assert a.fingerprint != b.fingerprint


def test_no_eval_rows_when_eval_fraction_is_zero(dataset_config):
    dataset_config.eval_fraction = 0.0
    data = load_conversations(dataset_config, seed=0)
    assert data.eval.num_rows == 0 and data.eval.column_names == data.train.column_names
    assert data.train.column_names == ["messages", "language", "task", "source", "id", "language_inferred",
                                      "language_confidence"]


def test_split_by_language_respects_cap_and_keeps_a_training_row():
    languages = ["en"] * 100 + ["sw"] * 3
    keys = [str(i) for i in range(103)]
    held = split_by_language(languages, keys, 0.5, 5, seed=0)
    assert sum(languages[i] == "en" for i in held) == 5
    assert sum(languages[i] == "sw" for i in held) == 2  # round(1.5) = 2, leaving one to train on
    assert sum(languages[i] == "sw" for i in split_by_language(languages, keys, 0.9, None, seed=0)) == 2


def test_fingerprint_follows_content(dataset_config):
    data = load_conversations(dataset_config, seed=0)
    assert fingerprint(data.train, data.eval) == data.fingerprint
    changed = data.train.map(lambda row: {"task": "other"})
    assert fingerprint(changed, data.eval) != data.fingerprint
    assert fingerprint(data.eval, data.train) != data.fingerprint  # moving rows between splits counts


def test_summary_is_json_ready(dataset_config):
    summary = load_conversations(dataset_config, seed=0).summary.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["excluded"] == {} and summary["language_inferred"] == 0


def test_several_sources_are_concatenated_in_order(dataset_config, tmp_path):
    other = tmp_path / "extra.jsonl"
    other.write_text(json.dumps(conversation(999, "de")) + "\n", encoding="utf-8")
    dataset_config.sources.append(SourceConfig(path=str(other), name="extra"))
    data = load_conversations(dataset_config, seed=0)
    assert data.train["source"][-1] == "extra" and data.train["task"][-1] == "general"
    assert set(data.train["source"]) == {"rows", "extra"}


def test_demo_corpus_texts_are_deterministic_and_multilingual():
    texts = demo_corpus_texts()
    assert texts == demo_corpus_texts()
    assert len(texts) > 10_000 and all(isinstance(t, str) and t.strip() for t in texts)
    for word in ("你", "Привет", "Hello", "नमस्ते"):
        assert any(word in t for t in texts), word


def test_demo_corpus_holds_out_every_language_within_the_cap():
    data = load_conversations(DataSetConfig(sources=[SourceConfig(path=DEMO_CORPUS, format="chatterbot")]), seed=0)
    assert all(sum(tasks.values()) >= 1 for tasks in data.summary.eval.values())
    assert max(sum(tasks.values()) for tasks in data.summary.eval.values()) <= 64
