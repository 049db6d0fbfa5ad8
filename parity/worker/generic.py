"""The generic tier's configs, derived from transformers' own config classes (runs inside the reference worker).

An architecture with no registry entry is still checked, coarsely, if transformers and the engines all
implement it: parity writes its config class's defaults with every size shrunk to a tiny model. This module
finds, per config class, the keys that hold those sizes (under the family's own names, through the class's
``attribute_map``) and the further values that must shrink with them (experts, special token ids), then
runs a forward at each corner of what is drawn to prove the result works.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from parity.worker.capture import discover

SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
         "intermediate_size", "vocab_size")
"""What the generic tier draws, under parity's names (``parity.strategies.generic_configs``)."""

SHRUNK: dict[str, Any] = {
    # Mixtures of experts, under each family's name for the same thing: few, narrow experts, every layer sparse.
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_k": 2,
    "moe_intermediate_size": 64, "expert_intermediate_size": 64, "shared_expert_intermediate_size": 64,
    "n_shared_experts": 1, "num_shared_experts": 1, "moe_num_shared_experts": 1,
    "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1,
    # Latent attention (MLA): vLLM's CPU decode kernel takes only a 576-wide latent (512 + 64 rotary).
    "q_lora_rank": 64, "qk_nope_head_dim": 32, "v_head_dim": 32,
}
"""Values written where the config class has the key: sizes that must shrink with the model."""

PROBES = ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
           "head_dim": 32, "intermediate_size": 64, "vocab_size": 256},
          {"hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 64, "intermediate_size": 128, "vocab_size": 256},
          {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
           "head_dim": 32, "intermediate_size": 64, "vocab_size": 256})
"""The corners of what ``parity.registry.GENERIC_SIZES`` draws (grouped and plain multi-head attention): the derived
template must run at each (MiMo-V2-Flash's sliding layers double the key/value heads, past the query heads
where they were equal)."""

HYBRID_LAYERS = 4
"""Layers of a model that needs more than the probes have (Qwen3-Next's and Kimi-Linear's first full-attention
layer is their fourth)."""

TOO_BIG = 20_000_000
"""Parameters above which some size was not shrunk (the probe models have under a million of their own)."""


def _key(defaults: Any, role: str) -> str | None:
    """The family's own name for ``role`` (``n_embd`` for GPT-2's hidden_size), or None where it has none."""
    mapped = type(defaults).attribute_map.get(role)
    if mapped is not None:
        return mapped
    # Only a field the class takes: one it derives after init (GPT-BigCode's num_key_value_heads, from multi_query)
    # would be stored as written yet contradict the model built from the rest (an engine reading it then disagrees).
    return role if role in {field.name for field in dataclasses.fields(defaults)} else None


def derive(model_type: str) -> dict[str, Any]:
    """The generic-tier entry for ``model_type``: its size keys (``keys``: parity name -> the family's) and
    the values written with every draw (``fixed``); or an ``error``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        defaults = CONFIG_MAPPING[model_type]()
        stored = defaults.to_dict()
        keys = {role: key for role in SIZES if (key := _key(defaults, role)) is not None}
        fixed: dict[str, Any] = {k: v for k, v in SHRUNK.items() if k in stored}
        vocab = PROBES[0]["vocab_size"]
        for key, value in stored.items():
            # Token ids of the full vocabulary would fall outside the tiny one.
            ids = value if isinstance(value, list) else [value] if isinstance(value, int) else []
            if key.endswith("token_id") and any(v >= vocab for v in ids):
                fixed[key] = None
        missing = [role for role in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
                   if role not in keys]
        if missing:
            return {"model_type": model_type, "error": f"the config class has no key for {', '.join(missing)}"}
        # Latent attention (MLA): head sizes of its own (qk_rope_head_dim, ...), and as many key/value heads as
        # query heads.
        mha = "kv_lora_rank" in stored
        if mha:
            keys = {role: key for role, key in keys.items() if role != "head_dim"}
        fixed = {k: v for k, v in fixed.items() if k not in keys.values()}  # drawn under this name (DeepSeek-V4)
        try:
            _probe(model_type, keys, fixed, mha, layers=None)
            layers = None
        except Exception:  # noqa: BLE001 - a hybrid model may need a full-attention layer among its first few
            _probe(model_type, keys, fixed, mha, layers=HYBRID_LAYERS)
            layers = HYBRID_LAYERS
    except Exception as exc:  # noqa: BLE001 - any failure is this architecture's census entry
        return {"model_type": model_type, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return {"model_type": model_type, "keys": keys, "fixed": fixed, **({"layers": layers} if layers else {}),
            **({"multi_head": True} if mha else {})}


def _probe(model_type: str, keys: dict[str, str], fixed: dict[str, Any], multi_head: bool, layers: int | None
           ) -> None:
    """Build and run the probe models (``layers`` each, where given; as many key/value heads as query heads where
    ``multi_head``), as the reference will run them: some defaults only fail in a forward (GPT-J's rotary_dim
    wider than a small head; a hybrid model whose first layers are all linear attention), and the layers and final
    norm the generic tier captures must be found."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for sizes in PROBES:
        sizes = {**sizes, **({"num_hidden_layers": layers} if layers else {}),
                 **({"num_key_value_heads": sizes["num_attention_heads"]} if multi_head else {})}
        probe = {keys[role]: value for role, value in sizes.items() if role in keys}
        config = AutoConfig.for_model(model_type, **fixed, **probe)
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        if params > TOO_BIG:
            raise ValueError(f"the probe model still has {params} parameters: a size key was not shrunk")
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        model(input_ids=torch.tensor([[1, 2, 3]]))
        discover(model)  # what the generic tier captures must be there
