"""The reference: Hugging Face transformers, eager attention, one prompt at a time.

q/k after RoPE are captured where attention takes them in, after any q/k norm and
with a partially rotated head put back together (engines' rotary modules return
them the same way): transformers' module-level ``eager_attention_forward`` of the
model's own modeling module, or, in families that predate the attention
interface (GPT-J), the attention module's own ``_attn``. Both are wrapped for the
duration of a run. Keys arrive concatenated with the cached ones: the last rows
are this forward's.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import torch

from parity import checkpoint as ckpt
from parity.worker.capture import (Hooks, NullRecorder, Parts, Recorder, config_head_dim, first, head_dim, hook_common,
                                   save)


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class Adapter:
    def __init__(self, device: str = "cpu"):
        import transformers

        self.device = device
        self.transformers = transformers

    def capabilities(self) -> dict[str, Any]:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return {
            "engine": "transformers",
            "versions": {"transformers": self.transformers.__version__, "torch": torch.__version__},
            "architectures": sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())),
            "head_sizes": None,  # any
            "dtypes": ["float32", "float64", "bfloat16", "float16"],
        }

    def write_checkpoint(self, config: dict[str, Any], seed: int, dir: str) -> dict[str, Any]:
        return ckpt.write(config, seed, dir)

    def run(self, checkpoint: str, prompts: Sequence[Sequence[int]], decode_steps: int, dtype: str,
            out: str, capture: bool = True, modules: dict[str, str] | None = None) -> dict[str, Any]:
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=getattr(torch, dtype), attn_implementation="eager",
            use_safetensors=True, trust_remote_code=False,
        ).to(self.device).eval()
        t1 = time.perf_counter()
        rec = Recorder(prompts, decode_steps, config_head_dim(checkpoint)) if capture else NullRecorder()
        hooks = self._install(Parts(model, modules), rec) if capture else Hooks()
        try:
            with torch.no_grad():
                for prompt in prompts:
                    self._generate(model, rec, list(prompt), decode_steps)
        finally:
            hooks.remove()
        t2 = time.perf_counter()
        result = save(rec.tensors(), out) if capture else {}
        return {**result, "seconds": {"load": t1 - t0, "forward": t2 - t1, "save": time.perf_counter() - t2}}

    def surface(self, config: dict[str, Any], seed: int, prompts: Sequence[Sequence[int]], decode_steps: int,
                modules: dict[str, str] | None = None, skip: Sequence[str] = (),
                candidates: dict[str, list[Any]] | None = None) -> dict[str, Any]:
        """The config keys transformers reads for ``config`` and which change its output (parity.worker.surface)."""
        from parity.worker import surface

        def capture(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            rec = Recorder(prompts, decode_steps, head_dim(config))
            hooks = self._install(Parts(model.to(self.device), modules), rec)
            try:
                with torch.no_grad():
                    for prompt in prompts:
                        self._generate(model, rec, list(prompt), decode_steps)
            finally:
                hooks.remove()
            return rec.tensors()

        t0 = time.perf_counter()
        entries = surface.measure(config, seed, capture, skip, candidates)
        return {"entries": entries, "seconds": {"measure": time.perf_counter() - t0}}

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=_layer_input, residual=lambda layer, out, args: first(out),
                            tokens=lambda t: t[0])  # batch of one prompt

        def record_qk(query: torch.Tensor, key: torch.Tensor) -> None:
            # [batch=1, heads, seq, head_dim] -> [seq, heads, head_dim]
            rec.record_layer("q_rot", query[0].transpose(0, 1))
            rec.record_layer("k_rot", key[0, :, -query.shape[-2]:].transpose(0, 1))

        modeling = sys.modules[type(parts.decoder).__module__]
        if hasattr(modeling, "eager_attention_forward"):
            original = modeling.eager_attention_forward

            def eager_attention_forward(module, query, key, *args, **kwargs):
                record_qk(query, key)
                return original(module, query, key, *args, **kwargs)

            hooks.replace(modeling, "eager_attention_forward", eager_attention_forward)
        else:
            for layer in parts.layers:
                attention = parts.attention(layer)

                def attn(query, key, *args, _original=attention._attn, **kwargs):
                    record_qk(query, key)
                    return _original(query, key, *args, **kwargs)

                hooks.replace(attention, "_attn", attn)
        return hooks

    def _generate(self, model, rec: Recorder, prompt: list[int], decode_steps: int) -> None:
        """Prefill then greedy decode with the KV cache, exactly as an engine serves the prompt."""
        ids = torch.tensor([prompt], device=self.device)
        positions = torch.arange(len(prompt), device=self.device)[None]
        cache = None
        for _ in range(decode_steps + 1):
            rec.begin_forward(positions, ids)
            out = model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[0, -1:]
            rec.record_logits(logits)
            ids = logits.argmax(-1)[None]
            positions = positions[:, -1:] + 1
