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
import time
from typing import Any, Sequence

# Must be set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far too much

import torch

from parity.worker.capture import (Hooks, Parts, Recorder, config_head_dim, first, forward_inputs, hook_common,
                                    hook_rotaries, save, takes_residual)


def _residual(layer: torch.nn.Module, output: Any, args: tuple) -> torch.Tensor:
    if not takes_residual(layer):
        return first(output)
    hidden, residual = output
    return hidden if residual is None else hidden + residual


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    # Decoder layers are called as layer(positions, hidden_states, residual).
    return args[1] if len(args) > 1 else kwargs["hidden_states"]


class Adapter:
    def __init__(self, device: str = "cpu"):
        import vllm

        self.device = device
        self.vllm = vllm

    def capabilities(self) -> dict[str, Any]:
        import transformers
        from vllm import ModelRegistry

        head_sizes = None
        if self.device == "cpu":
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            head_sizes = sorted(CPUAttentionBackend.get_supported_head_sizes())
        return {
            "engine": "vllm",
            "versions": {"vllm": self.vllm.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "architectures": sorted(ModelRegistry.get_supported_archs()),
            "head_sizes": head_sizes,
            "dtypes": ["float32", "bfloat16", "float16"],
        }

    def run(self, checkpoint: str, prompts: Sequence[Sequence[int]], decode_steps: int, dtype: str,
            out: str, capture: bool = True, modules: dict[str, str] | None = None) -> dict[str, Any]:
        from vllm import LLM, SamplingParams

        t0 = time.perf_counter()
        longest = max(len(p) for p in prompts) + decode_steps + 1
        llm = LLM(
            model=checkpoint, skip_tokenizer_init=True, dtype=dtype, enforce_eager=True, seed=0,
            max_model_len=max(longest, 64), max_num_seqs=max(len(prompts), 1),
            max_num_batched_tokens=max(2048, longest * len(prompts)),
            # On CPU this is the fraction of RAM reserved; the default 0.92 fails.
            gpu_memory_utilization=0.1 if self.device == "cpu" else 0.3,
            load_format="safetensors", trust_remote_code=False,
        )
        try:
            t1 = time.perf_counter()
            rec = Recorder(prompts, decode_steps, config_head_dim(checkpoint))
            hooks: list[Hooks] = llm.apply_model(lambda model: self._install(Parts(model, modules), rec)) if capture else []
            try:
                params = SamplingParams(temperature=0.0, max_tokens=decode_steps + 1, ignore_eos=True, detokenize=False)
                llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
            finally:
                for h in hooks:
                    h.remove()
            t2 = time.perf_counter()
            result = save(rec.tensors(), out) if capture else {}
            t3 = time.perf_counter()
        finally:
            del llm  # unreachable before the teardown's own gc.collect(), so its memory goes now
            self._cleanup()
        return {**result, "seconds": {"load": t1 - t0, "forward": t2 - t1, "save": t3 - t2,
                                      "teardown": time.perf_counter() - t3}}

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=_layer_input, residual=_residual)
        hooks.before_forward(parts.decoder, lambda *a, **kw: rec.begin_forward(*forward_inputs(a, kw)))
        hooks.post(parts.model.logits_processor, lambda m, a, o: rec.record_logits(o))
        hook_rotaries(hooks, rec, parts)
        return hooks

    @staticmethod
    def _cleanup() -> None:
        from vllm.distributed import cleanup_dist_env_and_memory
        from vllm.model_executor.layers import rotary_embedding

        cleanup_dist_env_and_memory()
        rotary_embedding._ROPE_DICT.clear()
