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

Loading, serving and reading the residual stream live in :mod:`parity.adapters.vllm_runner`,
which imports nothing from parity (repro bundles carry it); this module adds parity's capture.

The CUDA path (``--device cuda``) uses the same hooks; it is untested on a GPU.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from parity.adapters import vllm_runner as runner  # sets vLLM's environment before vllm is imported
from parity.adapters.base import EngineAdapter
from parity.worker.capture import Hooks, NullRecorder, Parts, Recorder, forward_inputs, hook_common, hook_rotaries
from parity.worker.contract import RunRequest


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

    def model_modules(self, architecture: str) -> str | None:
        from vllm import ModelRegistry

        entry = ModelRegistry.models.get(architecture)  # lazy entries name their module, loaded ones hold the class
        if entry is None:
            return None
        return getattr(entry, "module_name", None) or entry.model_cls.__module__

    def head_sizes(self) -> list[int] | None:
        if self.device != "cpu":
            return None
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return sorted(CPUAttentionBackend.get_supported_head_sizes())

    def unsupported_dtypes(self) -> dict[str, str]:
        """bf16 on CPU, decided from vLLM's own kernel choices: it loads its bf16 kernel build
        (``vllm._C``) only where torch reports AVX512-BF16 (``CpuPlatform.import_kernels``), and
        runs bf16 attention on AMX tiles wherever torch reports them (``_get_attn_isa``). Both other
        paths die with SIGILL (measured on 0.32.0): the AVX2 build on an AVX2 CPU (issue #12), and
        the AMX attention at its first ``tilezero`` (``cpu_attn_amx.hpp``) on an AMX Xeon whose
        AMX tiles work outside vLLM. Left: AVX512-BF16 without AMX, where it runs its vector attention
        (which, forced on that same Xeon, runs bf16)."""
        if self.device != "cpu":
            return {}
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        if not torch.cpu._is_avx512_bf16_supported():
            isa = "AVX-512 without BF16" if torch.cpu._is_avx512_supported() else "AVX2 only"
            return {"bfloat16": f"vLLM's CPU bf16 kernels (vllm._C) need AVX512-BF16, and this CPU has {isa}; "
                                f"its fallback build dies with SIGILL at bf16"}
        if _get_attn_isa(torch.bfloat16, block_size=32) == "amx":
            return {"bfloat16": "vLLM runs bf16 attention on AMX tiles on this CPU, and its AMX attention dies with "
                                "SIGILL at its first tilezero (cpu_attn_amx.hpp; AMX itself works here)"}
        return {}

    def load(self, request: RunRequest) -> Any:
        return runner.load(request.checkpoint, request.dtype, self.device, [list(p) for p in request.prompts],
                           request.decode_steps)

    def hook(self, loaded: Any, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        (hooks,) = loaded.apply_model(lambda model: self._install(Parts(model, modules), rec))
        return hooks

    def generate(self, loaded: Any, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        runner.generate(loaded, [list(p) for p in request.prompts], request.decode_steps)

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=_layer_input, residual=runner.residual_stream)
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
