"""aya_train: multilingual post-training recipes over transformers, trl, peft and accelerate."""

__version__ = "0.1.0"
