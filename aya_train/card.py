"""The model card (README.md with hub YAML metadata) of an exported model: what it is, where it came from
(the chain of stages, data sets and mixture), and how it does in each language.

Everything comes from the run directory (manifest.json, each stage's languages.json, the data mixture
table); nothing secret is in there to begin with (tokens are never written to the run directory).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from aya_train.artifacts import RunDir, read_json
from aya_train.pipeline import stage_reads

# Stage kinds whose per-language table measures an existing model (shown for the exported model when they
# read the exported stage); every other stage's table is shown only when it is in the model's lineage.
EVALUATION_KINDS = ("evaluate",)
# Stage fields worth a line in "Training procedure" (whatever exists on the stage's schema).
_HYPERPARAMETERS = ("max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "max_length", "beta",
                    "loss_type", "packing", "assistant_only_loss")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def lineage(cfg: DictConfig, stage: str) -> List[str]:
    """`stage` and every stage it was built from, in run order."""
    from aya_train.recipe import stage_refs

    wanted, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += [ref for _, ref in stage_refs(cfg.stages[name])]
    return [name for name in cfg.stages if name in wanted]


def is_hub_id(path: str) -> bool:
    """owner/name that is not a local path or a package resource."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(path).expanduser().exists()


def _data_sets(cfg: DictConfig, stages: List[str]) -> List[str]:
    used = (OmegaConf.select(cfg.stages[name], "data", default=None) for name in stages)
    return list(dict.fromkeys(name for name in used if name))


def mixture_markdown(run_dir: RunDir, data_set: str) -> Optional[str]:
    """The realised mixture table the data engine wrote for a data set: the markdown file recorded under
    manifest.json["data"][name]["report"], else `<run>/data/<name>/mixture.md`."""
    recorded = ((run_dir.load_manifest().get("data") or {}).get(data_set) or {}).get("report") or {}
    candidates = [Path(recorded["markdown"])] if recorded.get("markdown") else []
    candidates.append(run_dir.root / "data" / data_set / "mixture.md")
    for path in candidates:
        path = path if path.is_absolute() else run_dir.root / path
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


def _md_table(rows: Dict[str, Dict[str, Any]], first: str = "language") -> str:
    from aya_train.report import _md_table as table

    return table(rows, first)


def card_metadata(cfg: DictConfig, run_dir: RunDir, source: str, export: DictConfig, languages: List[str]) -> Dict:
    """The YAML header: hub fields (language, base_model, datasets, license, tags) plus the lineage."""
    manifest = run_dir.load_manifest()
    chain = lineage(cfg, source)
    sources = [src.path for ds in _data_sets(cfg, chain) for src in cfg.data[ds].sources]
    kinds = [cfg.stages[name].kind for name in chain]
    meta: Dict[str, Any] = {
        "language": languages,
        "license": export.license,
        "base_model": cfg.model.name_or_path if is_hub_id(cfg.model.name_or_path) else None,
        "datasets": list(dict.fromkeys(p for p in sources if is_hub_id(p))) or None,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(dict.fromkeys(["aya-train", "multilingual", *kinds, *export.tags])),
        "lineage": [
            {"stage": name, "kind": cfg.stages[name].kind,
             "reads": stage_reads(cfg.stages[name]),
             "data": OmegaConf.select(cfg.stages[name], "data", default=None),
             "fingerprint": (manifest["stages"].get(name) or {}).get("fingerprint"),
             "data_fingerprint": (manifest["stages"].get(name) or {}).get("data_fingerprint")}
            for name in chain
        ],
    }
    return {k: v for k, v in meta.items() if v is not None}


def trained_languages(cfg: DictConfig, run_dir: RunDir, source: str) -> List[str]:
    """Languages of the rows the lineage trained on (keys of each stage's per-language table)."""
    found = set()
    for name in lineage(cfg, source):
        table = read_json(run_dir.stage_dir(name) / "languages.json", default={}) or {}
        found.update(key for key in table if _LANGUAGE.match(key))
    return sorted(found)


def model_card(cfg: DictConfig, run_dir: RunDir, source: str, export: DictConfig, repo_id: Optional[str]) -> str:
    """README.md text for the model exported from stage `source`."""
    from huggingface_hub import ModelCardData

    languages = trained_languages(cfg, run_dir, source)
    meta = card_metadata(cfg, run_dir, source, export, languages)
    chain = lineage(cfg, source)
    manifest = run_dir.load_manifest()
    title = repo_id or f"{cfg.run.name}-{source}"
    base = cfg.model.name_or_path
    base_text = (f"[`{base}`](https://huggingface.co/{base})" if is_hub_id(base) else
                 "the built-in tiny random-initialised Llama-style model of aya_train (`model.name_or_path=tiny`)"
                 if base == "tiny" else f"a local model (`{Path(base).name}`)")
    out = [f"# {title}", "",
           f"A multilingual model post-trained from {base_text} with "
           f"aya_train through the stages {' → '.join(f'`{n}` ({cfg.stages[n].kind})' for n in chain)}, "
           f"run `{cfg.run.name}`, covering {len(languages)} languages: {', '.join(languages) or 'none recorded'}.",
           "", "## Use", "", "```python",
           "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
           f'tokenizer = AutoTokenizer.from_pretrained("{repo_id or "path/to/this/folder"}")',
           f'model = AutoModelForCausalLM.from_pretrained("{repo_id or "path/to/this/folder"}")',
           'messages = [{"role": "user", "content": "Habari yako?"}]',
           "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
           "output = model.generate(**inputs, max_new_tokens=64)",
           "print(tokenizer.decode(output[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
           "```", "", "## Lineage", "",
           "| stage | kind | reads | data set | steps | fingerprint |", "|---|---|---|---|---|---|"]
    for name in chain:
        entry = manifest["stages"].get(name) or {}
        reads = ", ".join(f"{k}={v}" for k, v in stage_reads(cfg.stages[name]).items()) or "base model"
        out.append(f"| {name} | {cfg.stages[name].kind} | {reads} | "
                   f"{OmegaConf.select(cfg.stages[name], 'data', default=None) or '-'} | "
                   f"{(entry.get('summary') or {}).get('steps', '-')} | {entry.get('fingerprint', '-')} |")
    out += ["", "## Training data", ""]
    for ds in _data_sets(cfg, chain):
        out.append(f"Data set `{ds}`:")
        for src in cfg.data[ds].sources:
            extra = ", ".join(f"{k} {src[k]}" for k in ("language", "task") if src[k])
            out.append(f"- `{src.path}` (format `{src.format}`{', ' + extra if extra else ''})")
        mixture = mixture_markdown(run_dir, ds)
        out += ["", f"Mixture of `{ds}`:", "", mixture] if mixture else []
        out.append("")
    out += ["## Results per language", ""]
    shown = chain + [n for n, node in cfg.stages.items()
                     if node.kind in EVALUATION_KINDS and source in lineage(cfg, n) and n not in chain]
    for name in shown:
        table = _md_table(read_json(run_dir.stage_dir(name) / "languages.json", default={}) or {})
        if table:
            out += [f"Stage `{name}` ({cfg.stages[name].kind}):", "", table, ""]
    out += ["## Training procedure", ""]
    for name in chain:
        node = cfg.stages[name]
        values = {k: node[k] for k in _HYPERPARAMETERS if k in node and node[k] is not None}
        lora = OmegaConf.select(node, "lora", default=None)
        if lora is not None and lora.enabled:
            values["lora"] = f"r={lora.r}, alpha={lora.alpha}, merged into the weights"
        out.append(f"- `{name}` ({node.kind}): " + ", ".join(f"{k}={v}" for k, v in values.items()))
    out += ["", f"Seed {cfg.run.seed}; aya-train {manifest.get('version')}"
                + (f" (commit {manifest['git_commit'][:12]})" if manifest.get("git_commit") else "") + ".",
            "", "## License", "",
            f"`{export.license}`." if export.license else
            "No license was set for this export (`stages.<export>.license`); ask the author before reusing it.", ""]
    header = ModelCardData(**meta).to_yaml()
    return f"---\n{header}\n---\n\n" + "\n".join(out)
