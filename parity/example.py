"""One parity example: a model config, the seed of its random weights and the prompts to run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from parity.registry import canonical_config, kv_heads, lookup, rope_sets
from parity.worker.contract import Execution

# Part of every checkpoint's cache key: bump when parity/checkpoint.py changes the weights it writes.
CHECKPOINT_RECIPE = 1


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Example:
    arch: str
    config: dict[str, Any]
    weight_seed: int
    prompts: tuple[tuple[int, ...], ...]
    decode_steps: int
    execution: Execution = Execution()
    """How the engines run it; the reference ignores it."""

    @property
    def id(self) -> str:
        return _digest(self.to_json())

    @property
    def checkpoint_id(self) -> str:
        return _digest([self.config, self.weight_seed, CHECKPOINT_RECIPE])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts"] = [list(p) for p in self.prompts]
        # Only the ways it differs from the plainest run: the plainest run is the one every example had
        # before execution was drawn, and a mode added later leaves the ids of examples without it (and the
        # reports and caches keyed by them) as they were.
        plain = asdict(Execution())
        d["execution"] = {mode: value for mode, value in d["execution"].items() if value != plain[mode]}
        if not d["execution"]:
            del d["execution"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Example:
        return cls(arch=d["arch"], config=dict(d["config"]), weight_seed=int(d["weight_seed"]),
                   prompts=tuple(tuple(int(t) for t in p) for p in d["prompts"]),
                   decode_steps=int(d["decode_steps"]), execution=Execution(**(d.get("execution") or {})))

    def describe(self) -> str:
        """One line naming the shape and every family knob that is on (see ``ArchSpec.family_knobs``)."""
        c = canonical_config(self.arch, self.config)
        bits = [f"layers={c['num_hidden_layers']}", f"heads={c['num_attention_heads']}/{kv_heads(c)}",
                f"head_dim={c.get('head_dim') or c['hidden_size'] // c['num_attention_heads']}",
                f"hidden={c['hidden_size']}"]
        for path, rope in rope_sets(c).items():
            at = "@" + path.partition(".")[2] if "." in path else ""  # per-layer-type RoPE: named after the layer type
            if "partial_rotary_factor" in rope:
                bits.append(f"partial_rotary_factor={rope['partial_rotary_factor']}{at}")
            if rope.get("rope_type", "default") != "default":
                bits.append(f"rope={rope['rope_type']}{at}")
        spec = lookup(self.arch)
        if spec and spec.tier == "generic":  # dozens of knobs, each written: those moved off the class's default
            bits += [f"{key}={c.get(key)}" for key, values in spec.knobs.items() if c.get(key) != values[0]]
        else:
            plain = {spec.activation_keys[0]: spec.activations[0]} if spec else {}
            bits += [f"{key}={c[key]}" for key in (spec.family_knobs if spec else ())
                     if c.get(key) not in (None, False, plain.get(key))]
        bits.append("prompt_lens=" + ",".join(str(len(p)) for p in self.prompts))
        bits.append(self.execution.describe())
        return f"{self.arch}(" + " ".join(filter(None, bits)) + ")"
