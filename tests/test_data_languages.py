"""Language codes are normalised to one canonical form, and identified offline when missing."""

import pytest

from aya_train.data.languages import UnknownLanguageError, identify_language, normalize_language


@pytest.mark.parametrize(
    "value, expected",
    [
        ("swh", "sw"), ("sw", "sw"), ("Swahili", "sw"), ("swahili", "sw"),  # 639-3 member, 639-1, names
        ("zh-Hant", "zh"), ("cmn", "zh"), ("Chinese", "zh"), ("traditional chinese", "zh"),
        ("pt_BR", "pt"), ("pt-BR", "pt"), ("EN", "en"), ("eng", "en"),
        ("fil", "fil"), ("Filipino", "fil"),  # no 2-letter code: stays 3-letter
        ("yo", "yo"), ("yor", "yo"), ("Yoruba", "yo"),
        ("arb", "ar"), ("Standard Arabic", "ar"), ("pes", "fa"), ("Persian", "fa"),
        ("Moroccan Arabic", "ary"),  # its own language in ISO 639-3, not folded into ar
        ("iw", "he"),  # deprecated code -> its replacement
    ],
)
def test_normalize_language_gives_one_canonical_code(value, expected):
    assert normalize_language(value) == expected


@pytest.mark.parametrize("value", ["xx-nonsense", "Klingonish", "", "und"])
def test_unknown_language_is_an_error_naming_the_value(value):
    with pytest.raises(UnknownLanguageError) as err:
        normalize_language(value)
    assert repr(value) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_language_suggests_close_matches():
    with pytest.raises(UnknownLanguageError, match="klingon"):
        normalize_language("Klingonish")
    with pytest.raises(UnknownLanguageError, match="swahili"):
        normalize_language("Swahilli")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The weather is lovely today and we are going to the park with the children.", "en"),
        ("Je voudrais un café, s'il vous plaît, avec un peu de lait chaud.", "fr"),
        ("Я очень люблю читать интересные книги по вечерам дома.", "ru"),
        ("मुझे हिंदी में किताबें पढ़ना बहुत पसंद है।", "hi"),
        ("私は毎朝コーヒーを飲みながら新聞を読みます。", "ja"),
        ("أنا أحب قراءة الكتب في المساء كثيرا مع عائلتي.", "ar"),
    ],
)
def test_identify_language_offline(text, expected):
    code, confidence = identify_language(text)
    assert code == expected
    assert 0.5 < confidence <= 1.0


def test_identify_language_of_empty_text_is_undetermined():
    assert identify_language("   ") == ("und", 0.0)
