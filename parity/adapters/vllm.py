"""vLLM, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so hooks go on the live model.

Conventions normalised here:
- a decoder layer handed the residual (fused add+RMSNorm ports) returns ``(hidden_states,
  residual)`` and the residual stream is their sum; one that is not (StableLM, GPT-J)
  returns the stream itself, first;
- the final norm is fused with the last residual add and returns ``(normed, residual)``;
- the rotary module returns q/k flattened to ``[tokens, heads * head_dim]``, may be
  shared by all layers (``get_rope`` caches it process-wide, so it is hooked once per
  model and the cache is cleared after every run: a patched or mutated rotary module
  must not leak into the next model) and may update q/k in place;
- logits are computed only for the tokens that are sampled;
- a mixture-of-experts block's runner (``mlp.experts``) calls the router linear (``mlp.gate``)
  itself and has its ``router`` select the experts, in no particular order.

The CUDA path (``--device cuda``) uses the same hooks; it is untested on a GPU.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

# Must be set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far too much

import torch

from parity.adapters.base import EngineAdapter
from parity.worker.capture import (Hooks, NullRecorder, Parts, Recorder, first, forward_inputs, hook_common,
                                    hook_rotaries, takes_residual)
from parity.worker.contract import RunRequest


def _residual(layer: torch.nn.Module, output: Any, args: tuple) -> torch.Tensor:
    if not takes_residual(layer):
        return first(output)
    hidden, residual = output
    return hidden if residual is None else hidden + residual


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    # Decoder layers are called as layer(positions, hidden_states, residual).
    return args[1] if len(args) > 1 else kwargs["hidden_states"]


class Adapter(EngineAdapter[Any]):
    engine = "vllm"

    def __init__(self, device: str = "cpu"):
        import vllm

        super().__init__(device)
        self.vllm = vllm

    def versions(self) -> dict[str, str]:
        import transformers

        return {"vllm": self.vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__}

    def architectures(self) -> list[str]:
        from vllm import ModelRegistry

        return list(ModelRegistry.get_supported_archs())

    def head_sizes(self) -> list[int] | None:
        if self.device != "cpu":
            return None
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return sorted(CPUAttentionBackend.get_supported_head_sizes())

    def load(self, request: RunRequest) -> Any:
        from vllm import LLM

        longest = max(len(p) for p in request.prompts) + request.decode_steps + 1
        return LLM(
            model=request.checkpoint, skip_tokenizer_init=True, dtype=request.dtype, enforce_eager=True, seed=0,
            max_model_len=max(longest, 64), max_num_seqs=max(len(request.prompts), 1),
            max_num_batched_tokens=max(2048, longest * len(request.prompts)),
            # On CPU this is the fraction of RAM reserved; the default 0.92 fails.
            gpu_memory_utilization=0.1 if self.device == "cpu" else 0.3,
            load_format="safetensors", trust_remote_code=False,
        )

    def hook(self, loaded: Any, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        (hooks,) = loaded.apply_model(lambda model: self._install(Parts(model, modules), rec))
        return hooks

    def generate(self, loaded: Any, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=request.decode_steps + 1, ignore_eos=True,
                                detokenize=False)
        loaded.generate([{"prompt_token_ids": list(p)} for p in request.prompts], params, use_tqdm=False)

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=_layer_input, residual=_residual)
        hooks.before_forward(parts.decoder, lambda *a, **kw: rec.begin_forward(*forward_inputs(a, kw)))
        hooks.post(parts.model.logits_processor, lambda m, a, o: rec.record_logits(o))
        hook_rotaries(hooks, rec, parts)
        for _, block in parts.sparse_blocks():
            # The block's MoE runner holds the router; its select_experts returns the
            # top-k (weights, experts), unsorted.
            router = block.experts.router

            def select_experts(*args: Any, _original=router.select_experts, **kwargs: Any) -> Any:
                logits = kwargs["router_logits"] if "router_logits" in kwargs else args[1]
                weights, experts = _original(*args, **kwargs)
                rec.record_routing(weights, experts, logits.shape[-1])
                return weights, experts

            hooks.replace(router, "select_experts", select_experts)
        return hooks

    def teardown(self, loaded: Any) -> None:
        from vllm.distributed import cleanup_dist_env_and_memory
        from vllm.model_executor.layers import rotary_embedding

        del loaded  # unreachable before the cleanup's own gc.collect(), so its memory goes now
        cleanup_dist_env_and_memory()
        rotary_embedding._ROPE_DICT.clear()
