"""How SFT lays out a batch, chosen to suit the attention kernel (`stages.<name>.batching`).

- `padding_free`: conversations packed by trl (best-fit decreasing) into rows of `max_length`, and the whole batch
  flattened into one row (trl's `packing=True`). A varlen kernel (FlashAttention) attends within each conversation
  only; without one, attention is paid over the whole flattened row (bench/packing.py: slower than padding on CPU).
- `packed_rows`: the same packs, kept as separate rows. Position ids restart at each conversation and no attention
  mask is passed, so transformers builds a block-diagonal causal mask per row: no padding is trained and no
  attention is spent across rows.
- `padded`: one conversation per row, padded to the longest in the batch (trl's `packing=False`).
- `auto`: `padding_free` with a FlashAttention kernel, else `packed_rows` (the faster of the other two on CPU).

Evaluation never packs, so eval losses do not depend on the batching chosen.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Dict

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

BATCHING_MODES = ("auto", "padding_free", "packed_rows", "padded")
# SFTConfig fields that `batching` sets; a stage's `args` may not set them too (one way to say each thing).
CONTROLLED_SFT_ARGS = ("packing", "padding_free", "eval_packing")


def is_varlen_kernel(attn_implementation: str) -> bool:
    """Whether the attention kernel can attend within each packed sequence of one flattened row."""
    return attn_implementation.startswith("flash_attention")


def resolve_batching(batching: str, attn_implementation: str) -> str:
    """The batching a stage trains with, given its `batching` value and the model's attention kernel."""
    if batching not in BATCHING_MODES:
        raise ValueError(f"batching={batching!r} is not supported; use one of: {', '.join(BATCHING_MODES)}")
    if batching == "auto":
        return "padding_free" if is_varlen_kernel(attn_implementation) else "packed_rows"
    if batching == "packed_rows" and is_varlen_kernel(attn_implementation):
        # transformers' FlashAttention path honours position-id restarts only in a batch of one row.
        raise ValueError(
            f"batching=packed_rows with attn_implementation={attn_implementation}: FlashAttention would attend "
            "across the conversations packed in a row; use batching=padding_free (or auto) with FlashAttention"
        )
    return batching


def sft_batching_args(mode: str) -> Dict[str, Any]:
    """SFTConfig fields for a resolved batching mode."""
    if mode in ("padding_free", "packed_rows"):
        return {"packing": True, "padding_free": False, "eval_packing": False}
    if mode == "padded":
        return {"packing": False, "padding_free": False, "eval_packing": False}
    raise ValueError(f"sft_batching_args: {mode!r} is not a resolved batching mode")


@dataclass
class PackedRowsCollator(DataCollatorForLanguageModeling):
    """trl's collator, rows kept apart: position ids restart per packed conversation and no attention mask is
    returned, so transformers masks attention block-diagonally within each row (needs `use_cache=False`, which
    trl's trainers pass). Unpacked rows (evaluation) come out as ordinary right-padded rows."""

    return_position_ids: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        # With an attention mask present, transformers would ignore the restarts and attend across conversations.
        del batch["attention_mask"]
        # A conversation's first token is not predicted from the end of the one packed before it.
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch




def check_stage(node: Any) -> None:
    """Recipe validation of an SFT stage's batching: ValueError('<key>: <what to do>')."""
    for key in CONTROLLED_SFT_ARGS:
        if key in node.args:
            raise ValueError(f"args.{key}: set by `batching` ({'|'.join(BATCHING_MODES)}); remove it from args.")
    if node.batching not in BATCHING_MODES:
        match = difflib.get_close_matches(str(node.batching), BATCHING_MODES, n=1)
        hint = f" Did you mean `{match[0]}`?" if match else ""
        raise ValueError(f"batching: `{node.batching}` is not one of {', '.join(BATCHING_MODES)}.{hint}")
