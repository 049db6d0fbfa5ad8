"""The generic tier's table: which architectures transformers and every engine implement, and the tiny
config parity derives for each from transformers' config class (``parity generic``).

The table is stored (``registry.GENERIC_TABLE``) so that a run draws the same generic entries without asking
the reference first; ``tests/test_generic.py`` derives it again and fails when it has gone stale.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from parity import registry
from parity.pool import WorkerHandle
from parity.worker.contract import GenericReply, GenericRequest


def derive(reference: WorkerHandle, engines: Sequence[WorkerHandle], timeout: float = 600.0) -> dict[str, Any]:
    """The generic table for the architectures the reference and every one of ``engines`` register."""
    shared = set(reference.capabilities.architectures)
    for engine in engines:
        shared &= set(engine.capabilities.architectures)
    reply: GenericReply = reference.call(GenericRequest(architectures=sorted(shared)), timeout)
    versions = {w.capabilities.engine: w.capabilities.engine_version for w in [reference, *engines]}
    return {"versions": versions, "entries": reply.entries}


def write(table: Mapping[str, Any]) -> None:
    registry.GENERIC_TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def render(table: Mapping[str, Any]) -> list[str]:
    """One line per shared model type: its tier, or why no tiny config could be derived."""
    entries = table["entries"]
    lines = [f"{len(entries)} model types share a causal LM in "
             + ", ".join(f"{e} {v}" for e, v in sorted(table["versions"].items()))]
    for model_type, entry in sorted(entries.items()):
        if model_type in registry.registry_model_types():
            tier = "full (registry entry)"
        elif "error" in entry:
            tier = f"none: {entry['error']}"
        else:
            tier = f"generic, sizes {', '.join(entry['keys'])}"
        lines.append(f"  {model_type:18} {entry['architecture']:32} {tier}")
    return lines
