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
- under tensor parallelism each rank holds its share of q/k heads, and kv heads are replicated
  over ranks when there are fewer of them than ranks; attention and MLP outputs are all-reduced;
  logits are gathered to the first rank only.

The CUDA path (``--device cuda``) uses the same hooks; it is untested on a GPU.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Mapping

# Must be set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far too much
# Tensor-parallel ranks are processes of their own: capture hooks reach them as pickled functions.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from functools import partial

import torch

from parity import schema
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
        return {}

    def load(self, request: RunRequest) -> Any:
        ranks = request.execution.tensor_parallel
        if ranks == 1:
            return self._engine(request, ranks)
        # One OpenMP thread group per rank; the default "auto" wants a NUMA node per rank.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = _thread_binds(ranks)
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

    def _engine(self, request: RunRequest, ranks: int) -> Any:
        from vllm import LLM

        longest = max(len(p) for p in request.prompts) + request.decode_steps + 1
        chunk = request.execution.prefill_chunk
        return LLM(
            tensor_parallel_size=ranks, distributed_executor_backend="mp" if ranks > 1 else None,
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
        # the hooks gathers the ranks' tensors into ``rec``.
        loaded.apply_model(partial(_install_rank, rec.router.prompts, rec.router.decode_steps, rec.head_dim,
                                   dict(modules)))
        hooks = Hooks()
        hooks.on_remove(lambda: rec.adopt(_gather(loaded.apply_model(_collect_rank),
                                                  engine.model_config.get_total_num_kv_heads())))
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
        # Logits are gathered to the first tensor-parallel rank; the others see None.
        hooks.post(parts.model.logits_processor, lambda m, a, o: o is None or rec.record_logits(o))
        hook_rotaries(hooks, rec, parts)
        return hooks

    def teardown(self, loaded: Any) -> None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # set only for tensor-parallel runs
        from vllm.distributed import cleanup_dist_env_and_memory
        from vllm.model_executor.layers import rotary_embedding

        del loaded  # unreachable before the cleanup's own gc.collect(), so its memory goes now
        cleanup_dist_env_and_memory()
        rotary_embedding._ROPE_DICT.clear()


def _thread_binds(ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` ranks: this process's cores split evenly, "0|1" for two
    ranks on two cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise RuntimeError(f"tensor_parallel={ranks} needs a core per rank; this process may use {len(cores)}")
    per = len(cores) // ranks
    return "|".join(",".join(map(str, cores[r * per : (r + 1) * per])) for r in range(ranks))


_RANK: dict[str, Any] = {}
"""A tensor-parallel rank's Recorder and hooks, between ``_install_rank`` and ``_collect_rank``."""


def _install_rank(prompts: list[list[int]], decode_steps: int, head_dim: int, modules: dict[str, str],
                  model: torch.nn.Module) -> None:
    rec = Recorder(prompts, decode_steps, head_dim)
    _RANK.update(rec=rec, hooks=Adapter._install(Parts(model, modules), rec))


def _collect_rank(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    _RANK.pop("hooks").remove()
    return _RANK.pop("rec").tensors()


def _gather(shards: list[dict[str, torch.Tensor]], kv_heads: int) -> dict[str, torch.Tensor]:
    """The canonical tensors from every rank's: a rank holds only its share of q and k heads (k heads
    replicated over ``ranks / kv_heads`` ranks when there are fewer kv heads than ranks); attention and
    MLP outputs are all-reduced, so every other tensor is whole on each rank, and logits are on the first."""
    ranks = len(shards)
    gathered = dict(shards[0])
    for key in gathered:
        kind = schema.parse_key(key)[2].rsplit(".", 1)[-1]  # layers.{i}.{kind}, or a tensor of no layer
        if kind == "q_rot" or (kind == "k_rot" and kv_heads >= ranks):
            gathered[key] = torch.cat([shard[key] for shard in shards], dim=1)
        elif kind == "k_rot":
            gathered[key] = torch.cat([shards[h * ranks // kv_heads][key] for h in range(kv_heads)], dim=1)
    return gathered
