"""The canonical activation schema: the contract between engine adapters and the comparator.

Every backend returns one safetensors file whose keys are
``step{s}/prompt{p}/{name}``. Step 0 is the prefill of prompt ``p`` (all of its
tokens); step ``k >= 1`` is the k-th greedy decode step (one token). Names:

=====================  ===========================  =====================================
name                   shape                        meaning
=====================  ===========================  =====================================
``token_ids``          ``[tokens]`` int64           ids fed to the model at this step
``embed``              ``[tokens, hidden]``         output of the token embedding
``layers.{i}.q_rot``   ``[tokens, heads, head_dim]`` q as attention takes it in (after q norm, RoPE; whole head)
``layers.{i}.k_rot``   ``[tokens, kv_heads, head_dim]`` k likewise (this forward's tokens)
``layers.{i}.attn_out`` ``[tokens, hidden]``        attention output (after o_proj, before any post-norm)
``layers.{i}.router_logits`` ``[tokens, experts]``  a mixture-of-experts router's logits (sparse layers only)
``layers.{i}.expert_weights`` ``[tokens, experts]`` each expert's routing weight (routed_scaling_factor included), zero where not chosen
``layers.{i}.mlp_out`` ``[tokens, hidden]``         MLP output, the whole MoE block's in a sparse layer (before any post-norm)
``layers.{i}.residual`` ``[tokens, hidden]``        the full residual stream after layer i
``final_norm``         ``[tokens, hidden]``         output of the final norm
``logits``             ``[1, vocab]``               logits of the last token of the step
=====================  ===========================  =====================================

This module is imported inside engine workers: standard library only.
"""

from __future__ import annotations

import re
from typing import NamedTuple

LAYER_KINDS = ("q_rot", "k_rot", "attn_out", "router_logits", "expert_weights", "mlp_out", "residual")
ROUTING = "expert_weights"
"""The kind whose disagreement may be a near-tie of the reference's own top-k (see parity.compare)."""
KINDS = ("embed", *LAYER_KINDS, "final_norm", "logits")
TOKEN_IDS = "token_ids"

_KEY = re.compile(r"^step(\d+)/prompt(\d+)/(.+)$")
_LAYER = re.compile(r"^layers\.(\d+)\.(\w+)$")


class TensorName(NamedTuple):
    """A parsed canonical tensor name; ``layer`` is None outside the decoder layers."""

    kind: str
    layer: int | None


def key(step: int, prompt: int, name: str) -> str:
    return f"step{step}/prompt{prompt}/{name}"


def layer_name(layer: int, kind: str) -> str:
    return f"layers.{layer}.{kind}"


def parse_key(k: str) -> tuple[int, int, str]:
    m = _KEY.match(k)
    if not m:
        raise ValueError(f"not a canonical activation key: {k!r} (expected 'step<s>/prompt<p>/<name>')")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def parse_name(name: str) -> TensorName:
    m = _LAYER.match(name)
    if m:
        if m.group(2) not in LAYER_KINDS:
            raise ValueError(f"unknown layer tensor kind {m.group(2)!r} in {name!r}; known: {LAYER_KINDS}")
        return TensorName(m.group(2), int(m.group(1)))
    if name not in KINDS:
        raise ValueError(f"unknown tensor name {name!r}; known: {KINDS} and layers.<i>.<kind>")
    return TensorName(name, None)


def execution_order(name: str) -> tuple[int, int]:
    """Sort key placing tensors in the order the forward pass computes them."""
    kind, layer = parse_name(name)
    if layer is None:
        return (-1, 0) if kind == "embed" else (1 << 30, KINDS.index(kind))
    return (layer, LAYER_KINDS.index(kind))
