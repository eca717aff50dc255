"""Data: canonical schema (schema), language codes (languages), layouts (presets), readers, loading + split."""
