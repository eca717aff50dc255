"""Merge stage: combine earlier stages' models into one model folder that later stages load like any other.

Life cycle: resolve inputs (a LoRA adapter is merged into its own base first) -> merge tensor by tensor
with peft's merge maths (`peft.utils.merge_utils`; SLERP, which peft lacks, is the few lines below) ->
save safetensors (sharded when large) + the first model's config and tokenizer to final/.

Tensors are read one at a time from the inputs' safetensors files, so memory holds one merged model plus
one tensor per input, not every input model.
"""

from __future__ import annotations

import json
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from aya_train.stages.common import StageContext, StageResult

# Files of a model folder that are weights or bookkeeping of how it was made; everything else is copied.
_NOT_COPIED = (".safetensors", ".bin", ".safetensors.index.json", "adapter_config.json", "aya_merged_from.json",
               "training_args.bin")
# peft's task-vector merges; SLERP and linear act on whole weights.
_TASK_VECTOR_METHODS = ("ties", "dare_linear", "dare_ties")


def method_weights(method: str, weights: Optional[Sequence[float]], n: int) -> List[float]:
    """Per-model factors from relative weights (only ratios matter).

    linear / dare_linear: normalised to sum 1 (a weighted average). ties / dare_ties: scaled to mean 1, because
    peft's disjoint merge already averages the models that agree on a sign. slerp: [1 - t, t].
    """
    raw = [1.0] * n if weights is None else [float(w) for w in weights]
    total = sum(raw)
    if method in ("ties", "dare_ties"):
        return [w * n / total for w in raw]
    return [w / total for w in raw]


def slerp(t: float, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two tensors, flattened; linear when they are (anti)parallel or zero."""
    a32, b32 = a.double(), b.double()
    na, nb = a32.norm(), b32.norm()
    if na < eps or nb < eps:
        return ((1 - t) * a32 + t * b32).to(a.dtype)
    cos = torch.clamp((a32.flatten() / na) @ (b32.flatten() / nb), -1.0, 1.0)
    if abs(cos.item()) > 0.9995:
        # Nearly parallel: sin(theta) ~ 0 makes the formula unstable, and lerp is the same to first order.
        return ((1 - t) * a32 + t * b32).to(a.dtype)
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    return ((torch.sin((1 - t) * theta) / sin_theta) * a32 + (torch.sin(t * theta) / sin_theta) * b32).to(a.dtype)


def merge_tensor(method: str, tensors: Sequence[torch.Tensor], factors: Sequence[float], *,
                 base: Optional[torch.Tensor] = None, density: float = 1.0, majority_sign_method: str = "total",
                 seed: int = 0) -> torch.Tensor:
    """Merge one parameter across models; `factors` come from `method_weights`, `base` is needed by ties / dare."""
    from peft.utils import merge_utils

    dtype = tensors[0].dtype
    if not dtype.is_floating_point:
        if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
            raise ValueError("integer buffers differ between the merged models")
        return tensors[0]
    work = [t.float() for t in tensors]
    w = torch.tensor(list(factors), dtype=torch.float32)
    if method == "linear":
        return merge_utils.task_arithmetic(work, w).to(dtype)
    if method == "slerp":
        return slerp(float(factors[1]), work[0], work[1]).to(dtype)
    if method not in _TASK_VECTOR_METHODS:
        raise ValueError(f"unknown merge method `{method}`")
    if base is None:
        raise ValueError(f"{method} needs the base model the task vectors are taken against")
    base32 = base.float()
    deltas = [t - base32 for t in work]
    with warnings.catch_warnings():
        # peft warns once per tensor that density 1 prunes nothing, which is what density 1 asks for.
        warnings.filterwarnings("ignore", message="The density .* no pruning")
        if method == "ties":
            merged = merge_utils.ties(deltas, w, density, majority_sign_method)
        else:
            # DARE's random drop uses torch's global generator: fork it and seed per tensor, so a merge is
            # reproducible and independent of the order tensors are visited in.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if method == "dare_linear":
                    merged = merge_utils.dare_linear(deltas, w, density)
                else:
                    merged = merge_utils.dare_ties(deltas, w, density, majority_sign_method)
    return (base32 + merged).to(dtype)


class SafetensorsFolder:
    """Read tensors by name from a model folder's safetensors files (single file or sharded with an index)."""

    def __init__(self, folder: Path, label: str):
        from safetensors import safe_open

        self.folder, self.label = folder, label
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{label}: no *.safetensors weights in {folder}")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self.where = {name: h for h in self._handles for name in h.keys()}

    def shape(self, name: str) -> tuple:
        return tuple(self.where[name].get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)


def merge_folders(method: str, models: Dict[str, Path], out_dir: Path, *, weights: Optional[Sequence[float]] = None,
                  base: Optional[Path] = None, density: float = 1.0, majority_sign_method: str = "total",
                  seed: int = 0) -> Dict[str, int]:
    """Merge full-weight model folders {label: folder} into `out_dir`; returns counts for the manifest."""
    from huggingface_hub import save_torch_state_dict

    labels = list(models)
    readers = [SafetensorsFolder(Path(models[label]), f"model `{label}`") for label in labels]
    base_reader = SafetensorsFolder(Path(base), "base") if method in _TASK_VECTOR_METHODS else None
    first = readers[0]
    for reader in readers[1:] + ([base_reader] if base_reader else []):
        _check_same_tensors(first, reader)
    factors = method_weights(method, weights, len(readers))
    merged: Dict[str, torch.Tensor] = {}
    for name in sorted(first.where):
        merged[name] = merge_tensor(
            method, [r.get(name) for r in readers], factors,
            base=base_reader.get(name) if base_reader else None, density=density,
            majority_sign_method=majority_sign_method, seed=zlib.crc32(f"{seed}:{name}".encode()),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(merged, out_dir, metadata={"format": "pt"})
    for item in Path(models[labels[0]]).iterdir():
        if item.is_file() and not item.name.endswith(_NOT_COPIED):
            shutil.copy2(item, out_dir / item.name)
    return {"tensors": len(merged), "parameters": sum(t.numel() for t in merged.values())}


def _check_same_tensors(first: SafetensorsFolder, other: SafetensorsFolder) -> None:
    if set(first.where) != set(other.where):
        only = sorted(set(first.where) ^ set(other.where))[:3]
        raise ValueError(f"{other.label} and {first.label} have different parameters (e.g. {only}): "
                         "merged models must share one architecture (train them from the same init).")
    for name in first.where:
        if first.shape(name) != other.shape(name):
            raise ValueError(f"{other.label}: `{name}` has shape {other.shape(name)} but {first.label} has "
                             f"{first.shape(name)}: merged models must share one architecture.")


def _full_weights(ctx: StageContext, ref: Optional[str]) -> Path:
    """Folder with full weights for a stage (its LoRA adapter merged into its base) or the base model."""
    from aya_train.modeling import merge_adapter_if_any

    path = ctx.model_path(ref)
    if not Path(path).exists():  # a hub id: fetch (or find in the local cache) just the weights and configs
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, revision=ctx.root.model.revision,
                                 allow_patterns=["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model"])
    label = ref or "base"
    return Path(merge_adapter_if_any(path, ctx.root.model, ctx.stage_dir / "inputs" / label))


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    models = list(c.models)
    if ctx.state.is_main_process:
        inputs = {name: _full_weights(ctx, name) for name in models}
        base = _full_weights(ctx, c.base) if c.method in _TASK_VECTOR_METHODS else None
        tmp = ctx.stage_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        counts = merge_folders(c.method, inputs, tmp, weights=list(c.weights) if c.weights is not None else None,
                               base=base, density=c.density, majority_sign_method=c.majority_sign_method,
                               seed=ctx.root.run.seed)
        shutil.rmtree(ctx.final_dir, ignore_errors=True)
        tmp.rename(ctx.final_dir)
        shutil.rmtree(ctx.stage_dir / "inputs", ignore_errors=True)  # merged adapters: only needed above
    ctx.state.wait_for_everyone()
    factors = method_weights(c.method, c.weights, len(models))
    summary = {"method": c.method, "models": models, "factors": dict(zip(models, factors))}
    if c.method in _TASK_VECTOR_METHODS:
        summary.update(base=c.base or ctx.root.model.name_or_path, density=c.density)
    if ctx.state.is_main_process:
        summary.update(counts)
        (ctx.stage_dir / "merge.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return StageResult(summary=summary)

