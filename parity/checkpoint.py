"""Tiny random-weight checkpoints that carry signal (runs inside the reference worker).

Every backend loads the same files (config.json + model.safetensors), so the
weights are parity's, never an engine's own dummy loader. Weights are scaled so
activations stay O(1) through the depth and logits are far from uniform:
embeddings ~ N(0, 1), matrices ~ N(0, 1/fan_in), and every 1-D parameter (norm
scales, biases) and every saved float buffer (a router's correction bias) is its
module's own initial value plus N(0, 0.1^2) noise, so a norm that is silently
skipped or mis-offset (e.g. Gemma's ``1 + weight``) shows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

REFERENCE_KERNELS = {"attn_implementation": "eager", "experts_implementation": "eager"}
"""How the reference builds a model: transformers' plain eager attention, and its per-expert loop for
mixtures of experts (the default grouped matmul refuses float64)."""


def build_config(config: dict[str, Any]):
    from transformers import AutoConfig

    kwargs = dict(config)
    model_type = kwargs.pop("model_type")
    return AutoConfig.for_model(model_type, **kwargs)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # By module type, whatever a family calls them (embed_tokens, wte); a tied lm_head shares the table.
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:  # tied weights: initialise once
            continue
        seen.add(id(param))
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
        if param.dim() == 1:
            value = param.double() + 0.1 * noise
        elif id(param) in embeddings:
            value = noise
        else:
            value = noise / param.shape[-1] ** 0.5
        param.copy_(value.to(param.dtype))
    # Weights kept as buffers are saved too (DeepSeek-V3's e_score_correction_bias, zero at init, so a bias used for
    # the wrong thing or not at all would never show); drawn after every parameter, so no parameter's draw moves.
    state = model.state_dict()
    for name, buffer in model.named_buffers():
        if name in state and buffer.is_floating_point():
            noise = torch.randn(buffer.shape, generator=gen, dtype=torch.float64)
            buffer.copy_((buffer.double() + 0.1 * noise).to(buffer.dtype))


def write(config: dict[str, Any], seed: int, directory: str) -> dict[str, Any]:
    """Write the checkpoint for ``config`` into ``directory`` atomically; return its summary."""
    from transformers import AutoModelForCausalLM

    target = Path(directory)
    hf_config = build_config(config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    randomize(model, seed)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    # Engines may not look for a generation config; keep the directory minimal and explicit.
    (tmp / "generation_config.json").unlink(missing_ok=True)
    (tmp / "parity.json").write_text(json.dumps({"config": config, "seed": seed}, indent=1))
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: its checkpoint is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return summary(target)


def summary(directory: Path) -> dict[str, Any]:
    files = sorted(p.name for p in directory.iterdir())
    return {"dir": str(directory), "files": files}
