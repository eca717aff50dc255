"""Merge stage: each method against hand-computed results, identical models merge to themselves, a merged
folder loads and is what later stages use, bad merge configs exit 2 naming the key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aya_train.cli import main
from aya_train.stages.merge import merge_folders, merge_tensor, method_weights, slerp

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
TAU1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
TAU2 = torch.tensor([-2.0, 1.5, 1.0, 0.1])


def test_linear_is_weighted_average():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[3.0, 2.0], [1.0, 0.0]])
    merged = merge_tensor("linear", [a, b], method_weights("linear", [1, 3], 2))
    assert torch.allclose(merged, torch.tensor([[2.5, 2.0], [1.5, 1.0]]))
    # Only ratios matter.
    assert torch.equal(merged, merge_tensor("linear", [a, b], method_weights("linear", [10, 30], 2)))


def test_slerp_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # 90 degrees apart
    half = merge_tensor("slerp", [a, b], method_weights("slerp", [1, 1], 2))
    assert torch.allclose(half, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    # t = 2/3: sin(pi/6) / 1 and sin(pi/3) / 1; the result stays on the unit circle, unlike lerp.
    two_thirds = merge_tensor("slerp", [a, b], method_weights("slerp", [1, 2], 2))
    assert torch.allclose(two_thirds, torch.tensor([0.5, math.sqrt(3) / 2]))
    assert two_thirds.norm().item() == pytest.approx(1.0)
    # Parallel tensors: no angle to follow, plain interpolation.
    assert torch.allclose(slerp(0.25, torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])), torch.tensor([1.25, 2.5]))


def test_ties_by_hand():
    # density 0.5 keeps the two largest |values|: tau1 -> [0, -2, 3, 0], tau2 -> [-2, 1.5, 0, 0].
    # Elected signs (sum of trimmed): [-2, -0.5, 3, 0] -> [-, -, +, +]; disagreeing entries are left out,
    # agreeing ones averaged: [-2, -2, 3, 0].
    models = [BASE + TAU1, BASE + TAU2]
    merged = merge_tensor("ties", models, method_weights("ties", None, 2), base=BASE, density=0.5)
    assert torch.allclose(merged, BASE + torch.tensor([-2.0, -2.0, 3.0, 0.0]))
    # Weights 1:3 -> factors 0.5, 1.5 scale the trimmed vectors; the signs are elected before weighting.
    weighted = merge_tensor("ties", models, method_weights("ties", [1, 3], 2), base=BASE, density=0.5)
    assert torch.allclose(weighted, BASE + torch.tensor([-3.0, -1.0, 1.5, 0.0]))
    # frequency: one vote each; entry 1 is a 1:1 tie between - and +, elected + (peft: >= 0).
    freq = merge_tensor("ties", models, method_weights("ties", None, 2), base=BASE, density=0.5,
                        majority_sign_method="frequency")
    assert torch.allclose(freq, BASE + torch.tensor([-2.0, 1.5, 3.0, 0.0]))


def test_dare_linear_drops_and_rescales():
    torch.manual_seed(0)
    base = torch.zeros(20_000)
    tau = torch.randn(20_000)
    merged = merge_tensor("dare_linear", [base + tau, base], method_weights("dare_linear", [1, 1], 2), base=base,
                          density=0.25, seed=7)
    kept = merged != 0
    # Every surviving entry is 0.5 * tau / 0.25 (weight over density); about a quarter survive.
    assert torch.allclose(merged[kept], 0.5 * tau[kept] / 0.25)
    assert kept.float().mean().item() == pytest.approx(0.25, abs=0.015)
    assert torch.equal(merged, merge_tensor("dare_linear", [base + tau, base], [0.5, 0.5], base=base,
                                            density=0.25, seed=7))  # the seed fixes the drop
    assert not torch.equal(merged, merge_tensor("dare_linear", [base + tau, base], [0.5, 0.5], base=base,
                                                density=0.25, seed=8))
    # density 1 drops nothing: task arithmetic with normalised weights.
    full = merge_tensor("dare_linear", [BASE + TAU1, BASE + TAU2], method_weights("dare_linear", [1, 3], 2),
                        base=BASE, density=1.0)
    assert torch.allclose(full, BASE + 0.25 * TAU1 + 0.75 * TAU2)


def test_dare_ties_by_hand():
    # density 1 keeps every entry; elected signs of tau1 + tau2 = [-1, -0.5, 4, 0.6] -> [-, -, +, +].
    merged = merge_tensor("dare_ties", [BASE + TAU1, BASE + TAU2], method_weights("dare_ties", None, 2), base=BASE,
                          density=1.0)
    assert torch.allclose(merged, BASE + torch.tensor([-2.0, -2.0, 2.0, 0.3]))
    # With drops, each surviving entry is a rescaled (tau / density) value of an agreeing model, or their mean.
    torch.manual_seed(1)
    t1, t2 = torch.randn(5000), torch.randn(5000)
    zero = torch.zeros(5000)
    out = merge_tensor("dare_ties", [t1, t2], [1.0, 1.0], base=zero, density=0.5, seed=3)
    candidates = torch.stack([zero, t1 / 0.5, t2 / 0.5, (t1 + t2) / 2 / 0.5])
    assert torch.isclose(candidates, out.expand_as(candidates), atol=1e-6).any(dim=0).all()


def _write_model(folder: Path, tensors: dict, tokenizer_from: Path) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for item in tokenizer_from.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors"):
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


@pytest.fixture(scope="module")
def two_models(tiny_model, tmp_path_factory):
    """The tiny model and a perturbed copy of it, as two model folders."""
    root = tmp_path_factory.mktemp("merge")
    weights = load_file(str(Path(tiny_model) / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    other = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in weights.items()}
    return Path(tiny_model), _write_model(root / "other", other, Path(tiny_model)), root


@pytest.mark.parametrize("method, weights", [("linear", [0.3, 0.7]), ("slerp", [2, 1]), ("ties", None),
                                             ("dare_linear", [1, 4]), ("dare_ties", None)])
def test_identical_models_merge_to_themselves(two_models, method, weights):
    base, other, root = two_models
    out = root / f"same-{method}"
    # ties / dare trim or drop task-vector entries by design; density 1 keeps all, so identity must hold.
    merge_folders(method, {"a": other, "b": other}, out, weights=weights, base=base, density=1.0)
    merged, original = load_file(str(out / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert merged.keys() == original.keys()
    for name in original:
        assert torch.allclose(merged[name], original[name], atol=1e-6), name


def test_merged_folder_loads_and_equals_the_average(two_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, other, root = two_models
    out = root / "avg"
    merge_folders("linear", {"base": base, "other": other}, out)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    a, b = load_file(str(base / "model.safetensors")), load_file(str(other / "model.safetensors"))
    for name, param in model.state_dict().items():
        assert torch.allclose(param, (a[name] + b[name]) / 2, atol=1e-6), name


def test_mismatched_architectures_are_refused(two_models):
    base, _, root = two_models
    weights = load_file(str(base / "model.safetensors"))
    name = next(iter(weights))
    smaller = _write_model(root / "smaller", {**weights, name: weights[name][:1]}, base)
    with pytest.raises(ValueError, match="same.*architecture|share one architecture"):
        merge_folders("linear", {"base": base, "smaller": smaller}, root / "never")


RECIPE = """
defaults:
  - /aya_train
  - /model: tiny
  - /data@data.sft: chatterbot
  - /stage@stages.sft: sft
  - /stage@stages.lora: sft
  - /stage@stages.full: sft
  - /stage@stages.merged: merge
  - _self_
run: {{name: merge-test, output_dir: {out}, cache_dir: {cache}}}
data: {{sft: {{max_eval_rows_per_language: 1}}}}
stages:
  sft: {{data: sft, max_steps: 3, learning_rate: 3.0e-3, per_device_train_batch_size: 8, max_length: 128, save_steps: 100}}
  lora: {{data: sft, init: sft, max_steps: 3, learning_rate: 3.0e-2, per_device_train_batch_size: 8, max_length: 128,
         save_steps: 100, lora: {{enabled: true, r: 4, alpha: 8}}}}
  full: {{data: sft, init: sft, max_steps: 3, learning_rate: 3.0e-3, per_device_train_batch_size: 8, max_length: 128,
         save_steps: 100}}
  merged: {{models: [lora, full], method: ties, base: sft, density: 0.5, weights: [1, 2]}}
"""


@pytest.fixture(scope="module")
def merge_run(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("merge-run")
    recipe = root / "merge.yaml"
    recipe.write_text(RECIPE.format(out=root / "runs", cache=cache_dir))
    return recipe, root / "runs" / "merge-test"


@pytest.mark.slow  # three 3-step SFT stages and a merge: ~30 s on 2 cores
def test_merge_stage_over_lora_and_full_weights(merge_run):
    from transformers import AutoModelForCausalLM

    recipe, run_dir = merge_run
    assert main([f"recipe={recipe}"]) == 0
    final = run_dir / "merged" / "final"
    assert (run_dir / "lora" / "final" / "adapter_config.json").is_file()  # one input really is an adapter
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert not (run_dir / "merged" / "inputs").exists()
    summary = json.loads((run_dir / "merged" / "merge.json").read_text())
    assert summary["method"] == "ties" and summary["factors"] == {"lora": pytest.approx(2 / 3), "full": pytest.approx(4 / 3)}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["merged"]["inputs"] == ["lora", "full", "sft"]
    model = AutoModelForCausalLM.from_pretrained(str(final))
    merged = model.state_dict()
    sft = load_file(str(run_dir / "sft" / "final" / "model.safetensors"))
    full = load_file(str(run_dir / "full" / "final" / "model.safetensors"))
    changed = [n for n in sft if not torch.equal(merged[n], sft[n])]
    assert changed, "the merge returned the base model unchanged"
    # Where only the fully trained model moved a weight (LoRA leaves embeddings alone), ties keeps its
    # trimmed task vector scaled by its factor: every such entry is the base or base + 4/3 * (full - base).
    name = "model.embed_tokens.weight"
    delta = merged[name] - sft[name]
    expected = 4 / 3 * (full[name] - sft[name])
    assert torch.all(torch.isclose(delta, expected, atol=1e-6) | (delta == 0))
    # density 0.5 keeps the larger half of the entries (fewer where training left most of them untouched).
    assert (delta != 0).sum() == min(int(0.5 * delta.numel()), (full[name] != sft[name]).sum())


def test_merge_stage_reused_when_unchanged(merge_run, capsys):
    recipe, run_dir = merge_run
    if not (run_dir / "merged" / "DONE").is_file():
        assert main([f"recipe={recipe}"]) == 0
    done = (run_dir / "merged" / "DONE").read_text()
    assert main([f"recipe={recipe}"]) == 0
    assert (run_dir / "merged" / "DONE").read_text() == done


@pytest.mark.parametrize("override, expected", [
    ("stages.merged.models=[lora]", ["stages.merged.models", "at least two"]),
    ("stages.merged.models=[lora,nope]", ["stages.merged.models", "`nope`"]),
    ("stages.merged.method=tie", ["stages.merged.method", "ties"]),
    ("stages.merged.weights=[1]", ["stages.merged.weights", "one non-negative number per model"]),
    ("stages.merged.density=0", ["stages.merged.density", "(0, 1]"]),
    ("stages.merged.base=later", ["stages.merged.base", "`later`"]),
    ("+stages.merged.args.foo=1", ["stages.merged.args"]),
])
def test_bad_merge_config_exits_2(merge_run, capsys, override, expected):
    recipe, _ = merge_run
    assert main([f"recipe={recipe}", override]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err


def test_slerp_needs_two_models(merge_run, capsys):
    recipe, _ = merge_run
    assert main([f"recipe={recipe}", "stages.merged.method=slerp", "stages.merged.models=[sft,lora,full]",
                 "stages.merged.weights=null"]) == 2
    assert "slerp interpolates exactly two models" in capsys.readouterr().err
