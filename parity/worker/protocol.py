"""Framing of the orchestrator <-> worker conversation: one JSON object per line.

Requests go to the worker's stdin. Replies come back on a private pipe (the
worker's original stdout, duplicated before the engine is imported), because
engines print freely to stdout; everything they print ends up in the worker's
stderr log instead. Tensors never travel on the pipe: they are written as
safetensors files in the run directory and only their path is sent. What the
messages hold is :mod:`parity.worker.contract`.
"""

from __future__ import annotations

import json
from typing import IO, Any

def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def write(stream: IO[bytes], message: dict[str, Any]) -> None:
    stream.write(encode(message))
    stream.flush()


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"protocol message is not an object: {line[:200]!r}")
    return message
