"""Language fidelity (reward + rate) and batched generation on held-out prompts."""

from __future__ import annotations

import pytest

from aya_train.stage_config import SamplingConfig
from aya_train.generation import generate, sampling_settings
from aya_train.metrics.fidelity import fidelity_rates, language_fidelity
from aya_train.modeling import load_model, load_tokenizer
from aya_train.recipe import compose_recipe

FRENCH = "Bonjour, je vais très bien aujourd'hui, merci beaucoup pour votre question."
GERMAN = "Guten Morgen, mir geht es heute sehr gut, vielen Dank für die Frage."
JAPANESE = "こんにちは、今日はとても元気です。ありがとうございます。"


def test_reward_is_one_only_in_the_prompts_language():
    completions = [[{"role": "assistant", "content": FRENCH}], [{"role": "assistant", "content": GERMAN}],
                   [{"role": "assistant", "content": JAPANESE}], [{"role": "assistant", "content": ""}]]
    assert language_fidelity(prompts=[None] * 4, completions=completions, language=["fr", "fr", "ja", "ja"]) == \
        [1.0, 0.0, 1.0, 0.0]
    assert language_fidelity(completions=[GERMAN], language=["de"]) == [1.0]  # plain-text completions too
    with pytest.raises(ValueError, match="language"):
        language_fidelity(completions=[GERMAN])


def test_rates_per_language_and_mean_counts_each_language_once():
    result = fidelity_rates([FRENCH, GERMAN, FRENCH, FRENCH, JAPANESE], ["fr", "fr", "fr", "fr", "ja"],
                            record={"backend": "transformers"})
    assert result.rates == {"fr": 0.75, "ja": 1.0} and result.counts == {"fr": 4, "ja": 1}
    assert result.mean == pytest.approx(0.875)  # not 4/5: Japanese weighs as much as French
    metrics = result.metrics()
    assert metrics["eval/language_fidelity/fr"] == 0.75 and metrics["eval/language_fidelity"] == pytest.approx(0.875)
    assert result.to_dict()["backend"] == "transformers"


PROMPTS = [[{"role": "user", "content": "Hi"}],
           [{"role": "user", "content": "Bonjour, comment allez-vous ce matin ? J'espère que tout va bien."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "こんにちは"}]]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    cfg = compose_recipe("demo")
    return load_model(cfg.model, tiny_model), load_tokenizer(cfg.model, tiny_model)


def test_left_padded_batch_gives_what_each_prompt_gives_alone(tiny):
    model, tok = tiny
    greedy = SamplingConfig(do_sample=False, max_new_tokens=12, batch_size=8)
    batched = generate(model, tok, PROMPTS, greedy).responses
    alone = [generate(model, tok, [p], greedy).responses[0] for p in PROMPTS]
    assert batched == alone
    assert tok.padding_side == "right"  # restored for training
    assert all(batched)


def test_sampling_is_reproducible_by_seed_and_recorded(tiny):
    model, tok = tiny
    settings = SamplingConfig(max_new_tokens=16, temperature=1.0, seed=7)
    first, again = generate(model, tok, PROMPTS, settings), generate(model, tok, PROMPTS, settings)
    other = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=16, temperature=1.0, seed=8))
    assert first.responses == again.responses != other.responses
    assert first.record() == {"sampling": {**settings.__dict__}, "backend": "transformers", "prompts": 3}


def test_bad_sampling_settings_name_the_key():
    with pytest.raises(ValueError, match="sampling.backend"):
        sampling_settings({"backend": "tgi"})
    with pytest.raises(ValueError, match="sampling.temperature"):
        sampling_settings({"temperature": 0.0})
