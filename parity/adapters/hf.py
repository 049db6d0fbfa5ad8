"""The reference: Hugging Face transformers, eager attention, one prompt at a time.

q/k after RoPE are captured where attention takes them in, after any q/k norm and
with a partially rotated head put back together (engines' rotary modules return
them the same way; multi-head latent attention's cut to their rotary parts, see ``latent_rotary``): transformers' module-level ``eager_attention_forward`` of the
model's own modeling module, or, in families that predate the attention
interface (GPT-J), the attention module's own ``_attn``. Both are wrapped for the
duration of a run. Keys arrive concatenated with the cached ones: the last rows
are this forward's.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

import torch

from parity.adapters.base import EngineAdapter
from parity.checkpoint import REFERENCE_KERNELS
from parity.worker.capture import Hooks, NullRecorder, Parts, Recorder, first, head_dim, hidden_input, hook_common
from parity.worker.contract import GenericReply, GenericRequest, RunRequest, SurfaceReply, SurfaceRequest


def latent_rotary(query: torch.Tensor, key: torch.Tensor, width: int,
                  interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head latent attention's ``[batch, heads, seq, qk_head_dim]`` q and k as parity compares them
    (``ModuleNames.latent_attention``): each head's rotary part (the last ``width`` dimensions) and the one rotary
    key every head shares, its pairs in place. transformers' interleaved RoPE returns a rotated part de-interleaved,
    the even dimensions then the odd ones (``apply_rotary_pos_emb_interleave``), which leaves every q.k unchanged;
    engines keep the pairs where the checkpoint lays them out."""
    q, k = query[..., -width:], key[:, :1, :, -width:]
    if interleaved:
        q, k = (t.unflatten(-1, (2, width // 2)).transpose(-1, -2).flatten(-2) for t in (q, k))
    return q, k


class Adapter(EngineAdapter[Any]):
    engine = "transformers"
    dtypes = ("float32", "float64", "bfloat16", "float16")
    teacher_forcing = True
    runs_execution = False

    def __init__(self, device: str = "cpu"):
        import transformers

        super().__init__(device)
        # The reference runs beside an engine worker on the same cores, on models of a few hundred thousand
        # weights: a second intra-op thread buys it nothing, while its spinning barriers starve the engine's
        # threads and theirs its own (8 prompts: the reference 0.9 s -> 0.13 s, the engine's forward 0.17 s
        # -> 0.014 s; benchmarks/bench.py).
        torch.set_num_threads(1)
        self.transformers = transformers

    def versions(self) -> dict[str, str]:
        return {"transformers": self.transformers.__version__, "torch": torch.__version__}

    def architectures(self) -> list[str]:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return list(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()))

    def unsupported_execution(self) -> dict[str, str]:
        # The reference's answer must not depend on how an engine runs: it ignores the
        # execution and always computes every prompt whole, one at a time.
        return {}

    def load(self, request: RunRequest) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            request.checkpoint, dtype=getattr(torch, request.dtype), **REFERENCE_KERNELS, use_safetensors=True, trust_remote_code=False,
        ).to(self.device).eval()

    def hook(self, loaded: Any, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        return self._install(Parts(loaded, modules), rec)

    def generate(self, loaded: Any, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        with torch.no_grad():
            for i, prompt in enumerate(request.prompts):
                forced = request.forced[i] if request.forced else None
                self._generate(loaded, rec, list(prompt), request.decode_steps, forced)

    def teardown(self, loaded: Any) -> None:
        pass  # a transformers model holds no process-wide state

    def generic(self, request: GenericRequest) -> GenericReply:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        from parity.worker import generic

        # Text decoders only: a ...ForConditionalGeneration class in the causal-LM table is a multimodal model.
        wanted = {a for a in request.architectures if not a.endswith("ForConditionalGeneration")}
        return GenericReply(entries={model_type: {"architecture": cls, **generic.derive(model_type)}
                                     for model_type, cls in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items())
                                     if cls in wanted})

    def surface(self, request: SurfaceRequest) -> SurfaceReply:
        """The config keys transformers reads for ``request.config`` and which change its output."""
        from parity.worker import surface

        serve = RunRequest(checkpoint="", prompts=request.prompts, decode_steps=request.decode_steps,
                           dtype="float32", out="", modules=request.modules)

        def capture(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            rec = Recorder(request.prompts, request.decode_steps, head_dim(request.config))
            hooks = self.hook(model.to(self.device), rec, request.modules)
            try:
                self.generate(model, rec, serve)
            finally:
                hooks.remove()
            return rec.tensors()

        t0 = time.perf_counter()
        entries = surface.measure(request.config, request.seed, capture, request.skip, request.candidates)
        return SurfaceReply(entries=entries, aliases=surface.aliases(request.config),
                            seconds={"measure": time.perf_counter() - t0})

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=hidden_input, residual=lambda layer, out, args: first(out),
                            tokens=lambda t: t[0])  # batch of one prompt
        for _, block in parts.sparse_blocks():
            # transformers' routers return (logits, top-k weights, top-k experts).
            hooks.post(getattr(block, parts.names.router),
                       lambda m, a, out: rec.record_routing(out[1], out[2], out[0].shape[-1]))

        def record_qk(query: torch.Tensor, key: torch.Tensor) -> None:
            # [batch=1, heads, seq, head_dim] -> [seq, heads, head_dim]
            rec.record_layer("q_rot", query[0].transpose(0, 1))
            rec.record_layer("k_rot", key[0, :, -query.shape[-2]:].transpose(0, 1))

        modeling = sys.modules[type(parts.decoder).__module__]
        if parts.names.coarse:
            return hooks
        if hasattr(modeling, "eager_attention_forward"):
            original = modeling.eager_attention_forward

            def eager_attention_forward(module, query, key, *args, **kwargs):
                if parts.names.latent_attention:
                    record_qk(*latent_rotary(query, key, rec.head_dim, module.config.rope_interleave))
                else:
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

    def _generate(self, model, rec: Recorder | NullRecorder, prompt: list[int], decode_steps: int,
                  forced: list[int] | None) -> None:
        """Prefill then decode with the KV cache, exactly as an engine serves the prompt: greedy, or
        teacher-forced along ``forced`` (the tokens another backend fed at decode steps 1..n)."""
        ids = torch.tensor([prompt], device=self.device)
        positions = torch.arange(len(prompt), device=self.device)[None]
        cache = None
        for step in range(decode_steps + 1):
            rec.begin_forward(positions, ids)
            out = model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[0, -1:]
            rec.record_logits(logits)
            if forced is None:
                ids = logits.argmax(-1)[None]
            elif step < decode_steps:
                ids = torch.tensor([[forced[step]]], device=self.device)
            positions = positions[:, -1:] + 1
