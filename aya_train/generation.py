"""Batched response generation for measurement: the same prompts, settings and seed for every policy.

transformers' `generate` with left padding (a decoder-only model continues from the right edge of each row);
vLLM instead when it is installed and a GPU is present (`SamplingConfig.backend`). The settings used are
returned with the responses, so every figure computed from them can say how they were sampled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from aya_train.config import ModelConfig
from aya_train.stage_config import SamplingConfig

BACKENDS = ("auto", "transformers", "vllm")
Messages = List[Dict[str, str]]


@dataclass(frozen=True)
class Generations:
    """Responses (one per prompt, in prompt order) and how they were made."""

    responses: List[str]
    settings: Dict[str, Any]  # the SamplingConfig fields, as used
    backend: str  # transformers or vllm

    def record(self) -> Dict[str, Any]:
        """What to store next to a figure computed from these responses."""
        return {"sampling": self.settings, "backend": self.backend, "prompts": len(self.responses)}


def sampling_settings(node: Any = None) -> SamplingConfig:
    """A SamplingConfig from a config node, a dataclass or None (defaults), checked."""
    if node is None:
        settings = SamplingConfig()
    elif isinstance(node, SamplingConfig):
        settings = node
    elif isinstance(node, DictConfig):
        settings = SamplingConfig(**OmegaConf.to_container(node, resolve=True))
    else:
        settings = SamplingConfig(**dict(node))
    if settings.backend not in BACKENDS:
        raise ValueError(f"sampling.backend={settings.backend!r}: use one of {', '.join(BACKENDS)}")
    if settings.max_new_tokens < 1 or settings.batch_size < 1:
        raise ValueError("sampling.max_new_tokens and sampling.batch_size must be at least 1")
    if settings.do_sample and settings.temperature <= 0:
        raise ValueError(f"sampling.temperature={settings.temperature} must be > 0 when sampling; "
                         "set sampling.do_sample=false for greedy decoding")
    return settings


def resolve_backend(settings: SamplingConfig) -> str:
    """`auto` is vLLM only when it is installed and a CUDA GPU is present."""
    from aya_train.modeling import on_gpu

    vllm_ok = importlib.util.find_spec("vllm") is not None and on_gpu()
    if settings.backend == "vllm" and not vllm_ok:
        raise ValueError("sampling.backend=vllm needs the vllm package and a CUDA GPU; use sampling.backend=auto")
    if settings.backend == "auto":
        return "vllm" if vllm_ok else "transformers"
    return settings.backend


def prompt_texts(tokenizer: Any, prompts: Sequence[Messages]) -> List[str]:
    """Each conversation rendered by the tokenizer's chat template, ending with the assistant header."""
    return [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def _generation_config(tokenizer: Any, s: SamplingConfig):
    from transformers import GenerationConfig

    sampling = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None) if s.do_sample else {}
    return GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **sampling)


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: Any = None) -> Generations:
    """Responses of a loaded causal LM to chat prompts, with transformers' generate, batched and left-padded."""
    s = sampling_settings(settings)
    texts = prompt_texts(tokenizer, prompts)
    config = _generation_config(tokenizer, s)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    responses: List[str] = []
    try:
        # A private RNG stream: each batch's draws depend only on the seed and the batch's position.
        with torch.random.fork_rng(devices=[]):
            for start in range(0, len(texts), s.batch_size):
                torch.manual_seed(s.seed + start)
                batch = tokenizer(texts[start:start + s.batch_size], return_tensors="pt", padding=True,
                                  add_special_tokens=False).to(model.device)
                out = model.generate(**batch, generation_config=config)
                new_tokens = out[:, batch["input_ids"].shape[1]:]
                responses.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return Generations([r.strip() for r in responses], dataclasses.asdict(s), "transformers")


def generate_from_path(path: str, model_cfg: ModelConfig, prompts: Sequence[Messages], settings: Any = None) -> Generations:
    """Responses of the model saved at `path` (full weights or a LoRA adapter folder)."""
    from aya_train.modeling import load_model, load_tokenizer, on_gpu

    s = sampling_settings(settings)
    tokenizer = load_tokenizer(model_cfg, path)
    if resolve_backend(s) == "vllm":
        return _generate_vllm(path, model_cfg, tokenizer, prompts, s)
    # An adapter folder loads as its base model with the adapter active (transformers' peft integration).
    model = load_model(model_cfg, path)
    if on_gpu():
        model = model.to("cuda")
    return generate(model, tokenizer, prompts, s)


def _generate_vllm(path: str, model_cfg: ModelConfig, tokenizer: Any, prompts: Sequence[Messages],
                   s: SamplingConfig) -> Generations:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, seed=s.seed, trust_remote_code=model_cfg.trust_remote_code, gpu_memory_utilization=0.4)
    params = SamplingParams(temperature=s.temperature if s.do_sample else 0.0, top_p=s.top_p, top_k=s.top_k or -1,
                            max_tokens=s.max_new_tokens, seed=s.seed)
    outputs = llm.generate(prompt_texts(tokenizer, prompts), params)
    return Generations([o.outputs[0].text.strip() for o in outputs], dataclasses.asdict(s), "vllm")
