"""The baseline of bench/overhead.py: the same SFT job written directly against trl, as a user would without
aya_train. Reads conversations (`messages`) from a jsonl file and trains a local model folder.

    python bench/plain_trl_sft.py DATA.jsonl MODEL_DIR OUT_DIR --steps 30 --batch 16 --max-length 256 [--packing]
"""

import argparse
import json

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--packing", action="store_true")
    a = p.parse_args()

    train = load_dataset("json", data_files=a.data, split="train")
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    args = SFTConfig(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch, max_length=a.max_length,
        learning_rate=a.lr, packing=a.packing, assistant_only_loss=True, logging_steps=10, save_strategy="no",
        report_to="none", seed=42, use_cpu=not torch.cuda.is_available(), bf16=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train.select_columns(["messages"]),
                         processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(a.out + "/final")
    tokenizer.save_pretrained(a.out + "/final")
    tokens = max((log.get("num_tokens", 0) for log in trainer.state.log_history), default=0)
    print("PLAIN_TRL " + json.dumps({"train_runtime": result.metrics["train_runtime"], "num_tokens": tokens}))


if __name__ == "__main__":
    main()
