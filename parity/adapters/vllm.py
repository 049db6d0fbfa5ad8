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
- logits are computed only for the tokens that are sampled.

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

PREFIX_BLOCK = 32
"""KV block size in tokens: the smallest vLLM's CPU attention takes (multiples of 32), so a prefix of
``parity.strategies.SHARED_PREFIX`` tokens fills a whole block and is reused."""


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

    def unsupported_execution(self) -> dict[str, str]:
        return {"tensor_parallel": "parity's vLLM adapter does not yet capture across tensor-parallel ranks"}

    def load(self, request: RunRequest) -> Any:
        from vllm import LLM

        longest = max(len(p) for p in request.prompts) + request.decode_steps + 1
        chunk = request.execution.prefill_chunk
        return LLM(
            model=request.checkpoint, skip_tokenizer_init=True, dtype=request.dtype, enforce_eager=True, seed=0,
            max_model_len=max(longest, 64), max_num_seqs=max(len(request.prompts), 1),
            # A budget below a prompt's length splits its prefill over several forwards.
            enable_chunked_prefill=chunk is not None,
            max_num_batched_tokens=chunk or max(2048, longest * len(request.prompts)),
            # Only whole blocks are reused: the default block (128 tokens on CPU) is longer than any prompt.
            enable_prefix_caching=request.execution.prefix_cache,
            block_size=PREFIX_BLOCK if request.execution.prefix_cache else None,
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
        prompts = [{"prompt_token_ids": list(p)} for p in request.prompts]
        if not request.execution.prefix_cache:
            loaded.generate(prompts, params, use_tqdm=False)
            return
        # One after another: requests scheduled together would all compute the shared prefix.
        for i, prompt in enumerate(prompts):
            (out,) = loaded.generate([prompt], params, use_tqdm=False)
            if i and not out.num_cached_tokens:
                raise RuntimeError(f"vLLM's prefix cache was not hit: prompt {i} shares a prefix with prompt 0 "
                                   f"of at least one block ({PREFIX_BLOCK} tokens) and had no cached token")

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=_layer_input, residual=_residual)
        hooks.before_forward(parts.decoder, lambda *a, **kw: rec.begin_forward(*forward_inputs(a, kw)))
        hooks.post(parts.model.logits_processor, lambda m, a, o: rec.record_logits(o))
        hook_rotaries(hooks, rec, parts)
        return hooks

    def teardown(self, loaded: Any) -> None:
        from vllm.distributed import cleanup_dist_env_and_memory
        from vllm.model_executor.layers import rotary_embedding

        del loaded  # unreachable before the cleanup's own gc.collect(), so its memory goes now
        cleanup_dist_env_and_memory()
        rotary_embedding._ROPE_DICT.clear()
