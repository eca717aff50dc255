"""Shared by the bench scripts: a line naming the machine and load, and a plain-text table."""

from __future__ import annotations

import os
import platform
from typing import List, Sequence


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """CPU/GPU, cores, thread setting, library versions and load average: printed next to every figure."""
    import torch
    import transformers
    import trl

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {cpu_name()}, {os.cpu_count()} cores, {gpu}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; load average {load}")


def print_table(header: Sequence[str], rows: List[Sequence[object]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
