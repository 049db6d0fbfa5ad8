"""The checkpoint cache: one directory per (config, weight seed, recipe), shared by runs.

A cached checkpoint is checked before every use: a file truncated by a crash or a
full disk would otherwise make every backend fail on "its" bug. A bad entry is
rebuilt, not reported.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable


class CorruptCheckpoint(ValueError):
    pass


def validate_safetensors(path: Path) -> None:
    """Raise CorruptCheckpoint unless ``path`` is a complete safetensors file (header and data sizes agree)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise CorruptCheckpoint(f"{path}: header length {n} exceeds the file ({size} bytes)")
            header = json.loads(fh.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{path}: unreadable safetensors header ({exc})") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CorruptCheckpoint(f"{path}: {size} bytes on disk, header describes {8 + n + end}")


def validate(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise CorruptCheckpoint(f"{directory}: no config.json")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise CorruptCheckpoint(f"{directory}: no safetensors weights")
    for w in weights:
        validate_safetensors(w)


def ensure(directory: Path, build: Callable[[], None], log: Callable[[str], None]) -> Path:
    """Return a valid checkpoint at ``directory``, building (or rebuilding) it with ``build``."""
    if directory.exists():
        try:
            validate(directory)
            return directory
        except CorruptCheckpoint as exc:
            log(f"parity: rebuilding a damaged cached checkpoint: {exc}")
            shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    build()
    validate(directory)
    return directory
