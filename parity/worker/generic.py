"""The generic tier's configs, derived from transformers' own config classes (runs inside the reference worker).

An architecture with no registry entry is still checked, coarsely, if transformers and the engines all
implement it: parity writes its config class's defaults with every size shrunk to a tiny model. This module
finds, per config class, the keys that hold those sizes (under the family's own names, through the class's
``attribute_map``) and the further values that must shrink with them (experts, special token ids), then
builds the smallest such model on the meta device to prove the result instantiates.
"""

from __future__ import annotations

from typing import Any

import torch

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

PROBE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 32, "intermediate_size": 64, "vocab_size": 256}
"""A small draw the derived template is proven on."""

TOO_BIG = 20_000_000
"""Parameters above which some size was not shrunk (the probe model has about 50 thousand of its own)."""


def _key(defaults: Any, role: str) -> str | None:
    """The family's own name for ``role`` (``n_embd`` for GPT-2's hidden_size), or None where it has none."""
    mapped = type(defaults).attribute_map.get(role)
    if mapped is not None:
        return mapped
    return role if role in defaults.to_dict() else None


def derive(model_type: str) -> dict[str, Any]:
    """The generic-tier entry for ``model_type``: its size keys (``keys``: parity name -> the family's),
    the values written with every draw (``fixed``), and the probe model's parameter count; or an ``error``."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        defaults = CONFIG_MAPPING[model_type]()
        stored = defaults.to_dict()
        keys = {role: key for role in SIZES if (key := _key(defaults, role)) is not None}
        fixed: dict[str, Any] = {k: v for k, v in SHRUNK.items() if k in stored}
        vocab = PROBE["vocab_size"]
        for key, value in stored.items():
            # Token ids of the full vocabulary would fall outside the tiny one.
            if key.endswith("token_id") and isinstance(value, int) and value >= vocab:
                fixed[key] = None
            if key.endswith("token_id") and isinstance(value, list) and any(v >= vocab for v in value):
                fixed[key] = None
        missing = [role for role in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
                   if role not in keys]
        if missing:
            return {"model_type": model_type, "error": f"the config class has no key for {', '.join(missing)}"}
        probe = {keys[role]: value for role, value in PROBE.items() if role in keys}
        fixed = {k: v for k, v in fixed.items() if k not in probe}  # a size drawn under this name (DeepSeek-V4)
        config = AutoConfig.for_model(model_type, **fixed, **probe)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # noqa: BLE001 - any failure is this architecture's census entry
        return {"model_type": model_type, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    entry = {"model_type": model_type, "keys": keys, "fixed": fixed, "probe_parameters": params}
    if params > TOO_BIG:
        entry["error"] = f"the probe model still has {params} parameters: a size key was not shrunk"
    return entry
