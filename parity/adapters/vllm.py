"""vLLM, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so hooks go on the live model; with more
than one tensor-parallel rank the ranks are processes vLLM spawns, and the hooks are installed in each.

Conventions normalised here:
- a decoder layer handed the residual (fused add+RMSNorm ports) returns ``(hidden_states,
  residual)`` and the residual stream is their sum; one that is not (StableLM, GPT-J)
  returns the stream itself, first;
- the final norm is fused with the last residual add and returns ``(normed, residual)``;
- the rotary module returns q/k flattened to ``[tokens, heads * head_dim]``, may be
  shared by all layers (``get_rope`` caches it process-wide, so it is hooked once per
  model and the cache is cleared after every run: a patched or mutated rotary module
  must not leak into the next model) and may update q/k in place;
- logits are computed for the last token of every sequence in a forward, an unfinished prefill
  chunk's included (then discarded);
- a mixture-of-experts block's runner (``mlp.experts``) calls the router linear (``mlp.gate``)
  itself and has its ``router`` select the experts, in no particular order; a routed_scaling_factor
  (GLM-4-MoE's) is applied by the runner to the experts' output, not to the router's weights;
- under tensor parallelism each rank holds its share of q/k heads, and kv heads are replicated
  over ranks when there are fewer of them than ranks; attention and MLP outputs are all-reduced;
  logits are gathered to the first rank only.

Loading, serving and reading the residual stream live in :mod:`parity.adapters.vllm_runner`,
which imports nothing from parity (repro bundles carry it); this module adds parity's capture.

The CUDA path (``--device cuda``) uses the same hooks; it is untested on a GPU.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from functools import partial
from typing import Any, Iterator, Mapping

# Tensor-parallel ranks are processes of their own: capture hooks reach them as pickled functions.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

import torch

from parity.adapters import vllm_runner as runner  # sets vLLM's environment before vllm is imported
from parity.adapters.base import EngineAdapter, checkpoint_structure
from parity.adapters.ranks import collect_rank, gather, install_rank, thread_binds
from parity.worker.capture import (Hooks, NullRecorder, Parts, Recorder, batch_first, forward_inputs, hidden_input,
                                   hook_common, hook_qk)
from parity.worker.contract import RunRequest

PREFIX_BLOCK = 32
"""KV block size in tokens: the smallest vLLM's CPU attention takes (multiples of 32), so a prefix of
``parity.strategies.SHARED_PREFIX`` tokens fills a whole block and is reused."""


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

    def unsupported_execution(self) -> dict[str, str]:
        return {}

    def load(self, request: RunRequest) -> Any:
        with _own_freezing_off():
            return self._load(request)

    def _load(self, request: RunRequest) -> Any:
        ranks = request.execution.tensor_parallel
        if ranks == 1:
            return self._engine(request, ranks)
        # One OpenMP thread group per rank; the default "auto" wants a NUMA node per rank.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = thread_binds(ranks)
        try:
            return self._engine(request, ranks)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
        # Out of the except clause nothing holds the half-built engine: collected now, its finalizers
        # tear down vLLM's process-wide parallel groups before the next model builds its own, not during.
        gc.collect()
        raise RuntimeError(f"{failure} (its ranks' errors stay in their own processes; the same load at one "
                           f"rank says: {self._one_rank_failure(request)})")

    def _load_args(self, request: RunRequest, ranks: int) -> dict[str, Any]:
        modes = request.execution
        # Only whole blocks are reused: the default block (128 tokens on CPU) is longer than any prompt.
        return dict(checkpoint=request.checkpoint, dtype=request.dtype, device=self.device,
                    prompts=[list(p) for p in request.prompts], decode_steps=request.decode_steps,
                    tensor_parallel=ranks, prefill_chunk=modes.prefill_chunk, prefix_cache=modes.prefix_cache,
                    block_size=modes.kv_block or (PREFIX_BLOCK if modes.prefix_cache else None))

    def structure(self, request: RunRequest) -> Any:
        """The checkpoint's structure and every other argument the ``LLM`` is built with. None (never held) under
        tensor parallelism, whose ranks' processes parity does not reload into; for a mixture-of-experts
        checkpoint, as vLLM's in-place reload of a fused-experts layer on CPU left expert weights other than a
        fresh load's (nearly every value of GLM-4-MoE's w13/w2, measured on 0.32 with ``tests/test_reuse.py``);
        and for latent attention, whose reload no test has compared."""
        if request.execution.tensor_parallel != 1:
            return None
        layout = checkpoint_structure(request.checkpoint)
        if any(b".experts." in content for name, content in layout if name.endswith(".safetensors")) or \
                json.loads(dict(layout)["config.json"]).get("kv_lora_rank") is not None:
            return None
        args = runner.engine_args(**self._load_args(request, 1))
        return layout, repr(sorted(args.items()))

    def reload(self, loaded: Any, request: RunRequest) -> None:
        runner.reload(loaded, request.checkpoint)

    def _engine(self, request: RunRequest, ranks: int) -> Any:
        llm = runner.load(**self._load_args(request, ranks))
        config, modes = llm.llm_engine.vllm_config, request.execution
        dropped = _dropped_modes(config, modes.modes())
        block = config.cache_config.block_size
        if dropped:
            del llm  # unreachable before the teardown's collection
            raise RuntimeError(f"vLLM turned {' and '.join(dropped)} off for this model (asked for, not run)")
        if modes.kv_block not in (None, block):
            del llm
            # A statement of its own: known issues match an error's traceback lines too, the raising one included.
            raise RuntimeError(f"vLLM set KV blocks of {block} tokens for this model, not {modes.kv_block} (not run)")
        return llm

    def _one_rank_failure(self, request: RunRequest) -> str:
        """Why the model fails to load at one rank, where the engine's own error reaches this process
        (known issues match it); "nothing" if it loads."""
        engine = None
        try:
            engine = self._engine(request, 1)
            return "nothing: it loads"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            self.teardown(engine)

    def hook(self, loaded: Any, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        engine = loaded.llm_engine
        if engine.vllm_config.parallel_config.tensor_parallel_size == 1:
            (hooks,) = loaded.apply_model(lambda model: self._install(Parts(model, modules), rec))
            return hooks
        # Each rank is a spawned process: it records into a Recorder of its own, and removing
        # the hooks gathers the ranks' tensors into ``rec`` (ranks.gather: Cohere's port leaves its parallel
        # block's attention and MLP outputs unreduced, and reduces their sum).
        loaded.apply_model(partial(install_rank, Adapter._install, rec.router.prompts, rec.router.decode_steps,
                                   rec.head_dim, rec.joining, dict(modules)))
        hooks = Hooks()
        hooks.on_remove(lambda: rec.adopt(gather(loaded.apply_model(collect_rank),
                                                 engine.model_config.get_total_num_kv_heads())))
        return hooks

    def generate(self, loaded: Any, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        cached = request.execution.prefix_cache
        # One after another under the prefix cache (or joining: each prefilled before the next arrives): requests
        # scheduled together would all compute the prefix. And under chunked prefill: prompts' decode steps fall
        # out of step there, so two prompts may feed the same token at the same position in the same forward,
        # which no capture can attribute to either (joining prompts, longest first, cannot).
        one_by_one = cached or request.execution.prefill_chunk is not None
        outputs = runner.generate(loaded, [list(p) for p in request.prompts], request.decode_steps,
                                  one_by_one=one_by_one, join_running=request.execution.join_running)
        block = loaded.llm_engine.vllm_config.cache_config.block_size  # vLLM may enlarge the one asked for
        for i, out in enumerate(outputs):
            if cached and i and not out.num_cached_tokens:
                raise RuntimeError(f"vLLM's prefix cache was not hit: prompt {i} shares a prefix with prompt 0 "
                                   f"of at least one block ({PREFIX_BLOCK} tokens asked for, {block} used) and "
                                   f"had no cached token")

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=hidden_input, residual=runner.residual_stream, tokens=batch_first)
        hooks.before_forward(parts.decoder, lambda *a, **kw: rec.begin_forward(*forward_inputs(a, kw)))
        # Logits are gathered to the first tensor-parallel rank; the others see None.
        hooks.post(parts.model.logits_processor, lambda m, a, o: o is None or rec.record_logits(o))
        hook_qk(hooks, rec, parts)
        for _, block in parts.sparse_blocks():
            # The block's MoE runner holds the router; its select_experts returns the top-k (weights, experts),
            # unsorted, and without routed_scaling_factor where the runner scales the experts' output instead
            # (its own routed_scaling_factor, 1.0 where the router applies it).
            moe = block.experts
            router = moe.router

            def select_experts(*args: Any, _original=router.select_experts, _scale=moe.routed_scaling_factor,
                               **kwargs: Any) -> Any:
                logits = kwargs["router_logits"] if "router_logits" in kwargs else args[1]
                weights, experts = _original(*args, **kwargs)
                rec.record_routing(weights * _scale, experts, logits.shape[-1])
                return weights, experts

            hooks.replace(router, "select_experts", select_experts)
        return hooks

    def teardown(self, loaded: Any) -> None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # set only for tensor-parallel runs
        from vllm.distributed import cleanup_dist_env_and_memory
        from vllm.model_executor.layers import rotary_embedding

        with _own_freezing_off():
            del loaded  # unreachable before the cleanup's own gc.collect(), so its memory goes now
            cleanup_dist_env_and_memory()
        rotary_embedding._ROPE_DICT.clear()


@contextlib.contextmanager
def _own_freezing_off() -> Iterator[None]:
    """vLLM's garbage-collector freezing off while it builds or destroys an engine. It freezes the whole heap once an
    engine is built and unfreezes it all at shutdown, then collects three times: unfreezing the worker's frozen
    engine import too (with what the first build imported, some 700,000 objects), so each of those collections, and
    the next build's, scanned it all (0.33 s each on 0.32: 1.0 s of the 1.2 s teardown, 1.0 s of the 1.4 s build).
    Off, the engine's own objects are never frozen, and go at a collection like any garbage; only serving skips its
    heap freeze, which spares its collections a scan. The first engine a worker builds outlives its teardown, frozen
    after it with what its build imported: a module imported during that build keeps a ModuleNotFoundError
    (torchcodec, missing here) whose traceback's frames reach back to the build's, holding the ``LLM`` (measured on
    0.32; later engines go)."""
    freeze, unfreeze = gc.freeze, gc.unfreeze
    gc.freeze = gc.unfreeze = _unchanged
    try:
        yield
    finally:
        gc.freeze, gc.unfreeze = freeze, unfreeze


def _unchanged() -> None:
    """Stands in for ``gc.freeze``/``gc.unfreeze`` (:func:`_own_freezing_off`)."""


def _dropped_modes(config: Any, modes: list[str]) -> list[str]:
    """The execution modes asked for that vLLM's engine config turned off again: its CPU platform does so for
    chunked prefill and the prefix cache with MLA models (``CpuPlatform.check_and_update_config``), and the prompts
    would then run whole, compared as if chunked or cached."""
    kept = {"chunked_prefill": config.scheduler_config.enable_chunked_prefill,
            "prefix_cache": config.cache_config.enable_prefix_caching}
    return [mode for mode in modes if kept.get(mode) is False]
