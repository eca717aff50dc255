"""Export stage: an earlier stage's model as a folder a hub user can load, with a model card, optionally
pushed to the hub. Glue over peft (merge), transformers (save_pretrained) and huggingface_hub (upload).

Life cycle: load the source model (merging a LoRA adapter) -> save safetensors (sharded above
max_shard_size), tokenizer with chat template, generation config -> write README.md (model card) ->
move the finished folder to <stage>/final -> push it, or list what a push would upload (dry run).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List

from aya_train.stages.common import StageContext, StageResult, replace_dir

log = logging.getLogger("aya_train")
UPLOAD_PLAN = "upload_plan.json"


def check_config(node) -> None:
    """Export settings checked before any model loads: ValueError('<key>: <what to do>'), which
    recipe.validate reports as a config error (exit 2)."""
    from transformers import GenerationConfig
    from transformers.utils.hub import convert_file_size_to_int

    try:
        convert_file_size_to_int(node.max_shard_size)
    except ValueError:
        raise ValueError(f"max_shard_size: `{node.max_shard_size}` is not a size; write e.g. 5GB or 500MB.") from None
    generation = GenerationConfig()
    unused = generation.update(**dict(node.generation))
    if unused:
        raise ValueError(f"generation: not GenerationConfig fields: {', '.join(sorted(unused))}.")
    try:
        generation.validate(strict=True)  # e.g. temperature without do_sample: caught now, not after training
    except ValueError as exc:
        raise ValueError(f"generation: {' '.join(str(exc).split())}") from None
    if node.push_to_hub or node.hub_dry_run:
        if not node.hub_model_id or not re.fullmatch(r"[\w.-]+/[\w.-]+", node.hub_model_id):
            raise ValueError(f"hub_model_id: push_to_hub needs a repository id `owner/name`, got {node.hub_model_id!r}.")
    if node.push_to_hub and not node.hub_dry_run:
        from huggingface_hub import get_token

        if get_token() is None:
            raise ValueError("push_to_hub: no hub token; run `hf auth login` or set HF_TOKEN (or set "
                             "hub_dry_run=true to see what would be uploaded).")


def run(ctx: StageContext) -> StageResult:
    c = ctx.cfg
    source = ctx.run_dir.final_dir(c.model)
    if ctx.state.is_main_process:
        partial = ctx.stage_dir / ".final.partial"
        shutil.rmtree(partial, ignore_errors=True)
        model, tokenizer = load_merged(ctx, source)
        save_folder(model, tokenizer, partial, c.max_shard_size, dict(c.generation))
        from aya_train.card import model_card

        (partial / "README.md").write_text(model_card(ctx.root, ctx.run_dir, c.model, c, c.hub_model_id),
                                           encoding="utf-8")
        replace_dir(partial, ctx.final_dir)
    ctx.state.wait_for_everyone()
    files = list_files(ctx.final_dir)
    summary: Dict[str, Any] = {"source": c.model, "files": len(files), "bytes": sum(f["bytes"] for f in files)}
    if ctx.state.is_main_process and (c.push_to_hub or c.hub_dry_run):
        summary.update(push(ctx, files))
    ctx.state.wait_for_everyone()
    return StageResult(summary=summary)


def load_merged(ctx: StageContext, source: Path):
    """The source stage's model with any LoRA adapter merged into the base weights, and its tokenizer."""
    from aya_train.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(ctx.root.model, str(source))
    adapter_config = source / "adapter_config.json"
    if not adapter_config.is_file():
        return load_model(ctx.root.model, str(source)), tokenizer
    import peft

    base_path = json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    base = load_model(ctx.root.model, base_path)
    log.info("export: merging the LoRA adapter of %s into %s", source, base_path)
    return peft.PeftModel.from_pretrained(base, str(source)).merge_and_unload(), tokenizer


def save_folder(model, tokenizer, out: Path, max_shard_size: str, generation: Dict[str, Any]) -> None:
    """safetensors weights (sharded with an index above max_shard_size), tokenizer + chat template, and a
    generation config that stops at the chat template's end-of-turn token."""
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.update(**generation)
    gen.validate(strict=True)
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(str(out), max_shard_size=max_shard_size, safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def list_files(folder: Path) -> List[Dict[str, Any]]:
    """Every file of the exported folder, as it would appear in the hub repository."""
    return [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file()]


def push(ctx: StageContext, files: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Upload final/ with huggingface_hub, or (hub_dry_run) write and print what would be uploaded.

    No token is passed or stored: huggingface_hub reads HF_TOKEN or the `hf auth login` cache itself."""
    c = ctx.cfg
    target = {"repo_id": c.hub_model_id, "private": c.hub_private_repo, "revision": c.hub_revision or "main"}
    if c.hub_dry_run:
        from aya_train.artifacts import atomic_write_json

        atomic_write_json(ctx.stage_dir / UPLOAD_PLAN, {**target, "folder": str(ctx.final_dir), "files": files})
        _print_upload_plan(target, files)
        return {"dry_run_upload": target}
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(c.hub_model_id, private=c.hub_private_repo, exist_ok=True, repo_type="model")
    if c.hub_revision:
        api.create_branch(c.hub_model_id, branch=c.hub_revision, exist_ok=True)
    info = api.upload_folder(repo_id=c.hub_model_id, folder_path=str(ctx.final_dir), revision=c.hub_revision,
                             commit_message=f"aya-train: export of stage {c.model} (run {ctx.root.run.name})")
    log.info("export: pushed %d files to %s", len(files), info.commit_url)
    return {"pushed": {**target, "commit_url": info.commit_url}}


def _print_upload_plan(target: Dict[str, Any], files: List[Dict[str, Any]]) -> None:
    from rich.table import Table

    from aya_train.report import console

    visibility = "private" if target["private"] else "public"
    table = Table(title=f"dry run: would upload to {target['repo_id']} ({visibility}, revision {target['revision']})")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for f in files:
        table.add_row(f["path"], str(f["bytes"]))
    console.print(table)
