"""The run directory: resolved config, manifest with lineage, one folder per stage, DONE markers.

Every file other processes or later runs read is written atomically (temp file + rename), so a kill at any
moment leaves either the old or the new version, never half of one. Only rank 0 calls the writers.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

import aya_train

DONE = "DONE"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; give it the permissions `open` would
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def git_commit() -> Optional[str]:
    """Commit of the aya_train checkout, when it is one (not for an installed wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(aya_train.__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """`<output_dir>/<run.name>/` and the paths inside it."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def final_dir(self, stage: str) -> Path:
        """Where a stage leaves its model in HF format for later stages."""
        return self.stage_dir(stage) / "final"

    def done_info(self, stage: str) -> Optional[Dict[str, Any]]:
        """The DONE marker's contents, or None while the stage is unfinished."""
        return read_json(self.stage_dir(stage) / DONE)

    def mark_done(self, stage: str, info: Dict[str, Any]) -> None:
        """Written last: its presence means every other output of the stage is complete."""
        atomic_write_json(self.stage_dir(stage) / DONE, {**info, "finished": time.time()})

    def clear_done(self, stage: str) -> None:
        (self.stage_dir(stage) / DONE).unlink(missing_ok=True)

    def load_manifest(self) -> Dict[str, Any]:
        return read_json(self.manifest_path, default=None) or {
            "package": "aya-train",
            "version": aya_train.__version__,
            "git_commit": git_commit(),
            "created": time.time(),
            "stages": {},
        }

    def update_stage(self, stage: str, **fields: Any) -> None:
        """Merge fields into manifest.json's entry for a stage."""
        manifest = self.load_manifest()
        manifest["version"], manifest["git_commit"] = aya_train.__version__, git_commit()
        manifest["stages"].setdefault(stage, {}).update(fields)
        atomic_write_json(self.manifest_path, manifest)
