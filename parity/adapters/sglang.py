"""SGLang (0.5.x), in-process: a bare ``ModelRunner`` (no server, scheduler, ports or
tokenizer), so hooks go on the live model. Loading, serving and reading the residual
stream live in :mod:`parity.adapters.sglang_runner`, which imports nothing from parity
(repro bundles carry it); this module adds parity's capture and the worker's teardown.

Conventions normalised here:
- a decoder layer returns only its own pending contribution and keeps the residual in
  ``forward_batch.residual_stream``; the full residual stream after a layer is
  ``sglang.srt.layers.layer_boundary.residual.batch.snapshot(output, forward_batch)``
  (see ``RESIDUAL_FROM``); ports not yet moved onto the stream (Gemma, Gemma2) still
  return ``(hidden_states, residual)``, whose sum is the stream;
- ``get_rope`` caches rotary modules process-wide (``_ROPE_DICT``): all layers of a model,
  and models built one after another in this worker, may share one rotary object, so it is
  hooked once per model and the cache is cleared after every run (a patched or mutated
  rotary module must not leak into the next model);
- the rotary module returns q/k flattened to ``[tokens, heads * head_dim]``; a port that
  rotates with the module-level ``apply_rotary_pos_emb`` on cos/sin computed once per forward
  instead (Gemma-3 outside Intel AMX: its attention's ``rotary_emb`` is built but never
  called) has that function wrapped in its own module, returning ``[tokens, heads, head_dim]``;
- a batch is flattened to ``[num_tokens, ...]``, requests in order; logits are computed
  only for each request's last token (``next_token_logits``);
- a mixture-of-experts block selects its experts in a ``topk`` module of its own, after
  the router linear (``gate``); a routed_scaling_factor (GLM-4-MoE's) is applied to the experts'
  output, not to the top-k weights, unless the TopK config says it is fused in.
- under tensor parallelism the ranks are processes of parity's own (``sglang_runner.Ranks``, as
  SGLang's ``bench_one_batch`` runs them), each holding its share of q/k heads; a layer's attention
  and MLP outputs may be partial sums, reduced at the layer's boundary (``reduce_results=False``
  under stage boundaries), and the residual stream and logits are whole on every rank.

On CPU, SGLang needs ``SGLANG_USE_CPU_ENGINE=1`` before import, torchvision's op schemas
(its PyPI wheel's compiled ops do not load next to CPU torch) and an importable
``sgl_kernel``: parity's CPU environment vendors a pure-torch stand-in
(``adapters/sglang_cpu_support``); ``sglang_runner.prepare_cpu`` only checks that it is there.

The CUDA path (``--device cuda``) is written but untested on a GPU.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import Any, Mapping

import safetensors.torch
import torch

from parity.adapters import sglang_runner as runner
from parity.adapters.base import EngineAdapter, checkpoint_structure
from parity.adapters.ranks import RANK, collect_rank, gather, install_rank, thread_binds
from parity.worker.capture import (Hooks, NullRecorder, Parts, Recorder, first, forward_inputs, hidden_input, hook_common,
                                   hook_qk)
from parity.worker import patches
from parity.worker.contract import RunRequest

# Where ``layers.{i}.residual`` comes from, read at every capture. "snapshot": SGLang's
# residual snapshot, the full residual stream (what transformers' layer returns). "raw":
# the decoder layer's return value, only its pending contribution; a patch file setting
# ``parity.adapters.sglang.RESIDUAL_FROM = "raw"`` shows that ignoring the convention is
# reported as a divergence at ``layers.0.residual``.
RESIDUAL_FROM = "snapshot"


def _residual(layer: torch.nn.Module, output: Any, args: tuple) -> torch.Tensor:
    if RESIDUAL_FROM == "raw":
        return first(output)
    if RESIDUAL_FROM != "snapshot":
        raise ValueError(f"RESIDUAL_FROM must be 'snapshot' or 'raw', not {RESIDUAL_FROM!r}")
    return runner.residual_stream(layer, output, args)


class Adapter(EngineAdapter[Any]):
    engine = "sglang"

    def __init__(self, device: str = "cpu"):
        if device == "cpu":
            runner.prepare_cpu()
            # As the reference (parity/adapters/hf.py), on the cores the reference runs on: a second intra-op thread
            # buys a tiny model nothing, and its spinning barriers beside the reference cost the forward ten times
            # (8 prompts of 15-64 tokens, 4 steps: 0.27 s -> 0.03 s; benchmarks/bench.py). Tensor-parallel ranks
            # bind their own (one core each).
            torch.set_num_threads(1)
        import sglang

        super().__init__(device)
        self.sglang = sglang

    def versions(self) -> dict[str, str]:
        import transformers

        return {"sglang": self.sglang.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__}

    def architectures(self) -> list[str]:
        from sglang.srt.models.registry import ModelRegistry

        return list(ModelRegistry.get_supported_archs())

    def model_modules(self, architecture: str) -> str | None:
        from sglang.srt.models.registry import ModelRegistry

        cls = ModelRegistry.models.get(architecture) if ModelRegistry.is_arch_supported(architecture) else None
        return None if cls is None else cls.__module__

    def unsupported_features(self) -> dict[str, str]:
        """Read from the engine's own code: a torch_native attention backend that never reads a
        layer's ``logit_cap`` computes plain softmax attention, so soft-capped models would run,
        but wrongly (it takes any head size); a Qwen2-MoE block that gates its shared expert with
        the Triton kernel ``fused_gate_sigmoid_mul_add`` outside the Intel AMX backend (which
        parity's CPU stand-in leaves off) fails on CPU, where Triton has no driver; a torch_native
        backend without an MLA path cannot serve DeepSeek's latent KV cache."""
        import inspect

        from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
        from sglang.srt.models.qwen2_moe import Qwen2MoeSparseMoeBlock

        lacking = {}
        if "logit_cap" not in inspect.getsource(TorchNativeAttnBackend):
            lacking["attn_logit_softcapping"] = (
                "its torch_native attention backend (the one that runs on CPU) ignores RadixAttention.logit_cap")
        if self.device == "cpu" and "fused_gate_sigmoid_mul_add(" in inspect.getsource(Qwen2MoeSparseMoeBlock):
            lacking["shared_expert_gate"] = (
                "its Qwen2-MoE gates the shared expert with a Triton kernel (fused_gate_sigmoid_mul_add) unless "
                "Intel AMX kernels are loaded; Triton has no CPU driver (\"0 active drivers\")")
        if self.device == "cpu" and "mla" not in inspect.getsource(TorchNativeAttnBackend).lower():
            lacking["latent_attention"] = (
                "its torch_native attention backend (the one that runs on CPU without Intel AMX kernels) has no MLA "
                "path: DeepSeek's prefill attends with the decompressed 128-wide queries over the layer's cache "
                "buffer, the 576-wide compressed latent (\"Expected size for first two dimensions of batch2 tensor to "
                "be: [1, 128] but got: [1, 576]\")")
        return lacking

    def unsupported_execution(self) -> dict[str, str]:
        return {}

    def load(self, request: RunRequest) -> Any:
        args = (request.checkpoint, request.dtype, self.device, [list(p) for p in request.prompts],
                request.decode_steps)
        ranks, page_size = request.execution.tensor_parallel, request.execution.kv_block
        if ranks == 1:
            return runner.load(*args, page_size=page_size)
        if self.device == "cpu":
            os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = thread_binds(ranks)
        # The worker's --patch files reach the ranks once SGLang imports there (after prepare_cpu), not at their
        # interpreter's start, where the workers' sitecustomize would apply them and fail to import SGLang.
        inherited = os.environ.pop(patches.ENV, None)
        try:
            return runner.Ranks(*args, ranks, page_size,
                                setup=partial(patches.apply, inherited.split(os.pathsep)) if inherited else None)
        finally:
            if inherited:
                os.environ[patches.ENV] = inherited

    def structure(self, request: RunRequest) -> Any:
        """The checkpoint's structure and every other argument the ``ModelRunner`` is built with; None (never
        held) under tensor parallelism, whose ranks' processes parity does not reload into."""
        if request.execution.tensor_parallel != 1:
            return None
        args = runner.engine_args(request.dtype, self.device, [list(p) for p in request.prompts],
                                  request.decode_steps, page_size=request.execution.kv_block)
        return checkpoint_structure(request.checkpoint), repr(sorted(args.items()))

    def reload(self, loaded: Any, request: RunRequest) -> None:
        runner.reload(loaded, request.checkpoint)

    def hook(self, loaded: Any, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        if not isinstance(loaded, runner.Ranks):
            return self._install(Parts(runner.model(loaded), modules), rec)
        # Each rank records into a Recorder of its own; removing the hooks gathers the ranks' tensors into
        # ``rec`` (attention and MLP outputs a port reduces at the layer's boundary summed: ranks.gather).
        loaded.apply(_install_rank, rec.router.prompts, rec.router.decode_steps, rec.head_dim, rec.joining,
                     dict(modules))

        def collect() -> None:
            if not loaded.serving:
                return  # ranks stopped by a failure have nothing to collect: the failure is reported
            collected = loaded.apply(_collect_rank)
            rec.adopt(gather([safetensors.torch.load(tensors) for tensors, _ in collected], *collected[0][1]))

        hooks = Hooks()
        hooks.on_remove(collect)
        return hooks

    def generate(self, loaded: Any, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        prompts, modes = [list(p) for p in request.prompts], request.execution
        if isinstance(loaded, runner.Ranks):
            loaded.apply(_generate_rank, prompts, request.decode_steps, modes.prefill_chunk, modes.prefix_cache,
                         modes.join_running)
            return
        runner.generate(loaded, prompts, request.decode_steps, rec.record_logits, prefill_chunk=modes.prefill_chunk,
                        prefix_cache=modes.prefix_cache, join_running=modes.join_running)

    def teardown(self, loaded: Any) -> None:
        from sglang.srt.distributed.parallel_state import cleanup_dist_env_and_memory
        from sglang.srt.layers.rotary_embedding import factory as rope_factory
        from sglang.srt.runtime_context import reset_context

        os.environ.pop("SGLANG_CPU_OMP_THREADS_BIND", None)  # set only for tensor-parallel runs
        if isinstance(loaded, runner.Ranks):
            loaded.close()  # each rank's process-wide state goes with it
            return
        if loaded is not None:
            loaded.req_to_token_pool.clear()
            loaded.token_to_kv_pool_allocator.clear()
            del loaded  # unreachable before the collection after every teardown, so the model's memory goes then
        cleanup_dist_env_and_memory()
        reset_context()  # the published ServerArgs and ranks
        rope_factory._ROPE_DICT.clear()

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=hidden_input, residual=_residual)
        hooks.pre(parts.decoder, lambda m, a, kw: rec.begin_forward(*forward_inputs(a, kw)), with_kwargs=True)
        hook_qk(hooks, rec, parts)
        # Some ports (Gemma-3) rotate with the module-level function rather than a rotary module.
        modeling = sys.modules[type(parts.model).__module__]
        if hasattr(modeling, "apply_rotary_pos_emb") and not parts.names.coarse:
            original = modeling.apply_rotary_pos_emb

            def apply_rotary_pos_emb(*args: Any, **kwargs: Any) -> Any:
                q, k = original(*args, **kwargs)
                rec.record_heads("q_rot", q)
                rec.record_heads("k_rot", k)
                return q, k

            hooks.replace(modeling, "apply_rotary_pos_emb", apply_rotary_pos_emb)
        from sglang.srt.layers.moe.topk import is_routed_scaling_factor_fused_in_topk

        for _, block in parts.sparse_blocks():
            # The block's TopK module returns (weights, experts, router logits), the weights without
            # routed_scaling_factor unless its config says the scale is fused in (it is applied to the
            # experts' output instead).
            config = block.topk.topk_config
            scale = 1.0 if is_routed_scaling_factor_fused_in_topk(config) else config.routed_scaling_factor or 1.0
            hooks.post(block.topk, lambda m, a, out, scale=scale: rec.record_routing(
                out.topk_weights * scale, out.topk_ids, out.router_logits.shape[-1]))
        return hooks


# A tensor-parallel rank's side of the capture (``Ranks.apply`` runs each as fn(*args, runner) in every rank).
def _install_rank(prompts: list[list[int]], decode_steps: int, head_dim: int, joining: bool, modules: dict[str, str],
                  loaded: Any) -> None:
    install_rank(Adapter._install, prompts, decode_steps, head_dim, joining, modules, runner.model(loaded))


def _generate_rank(prompts: list[list[int]], decode_steps: int, prefill_chunk: int | None, prefix_cache: bool,
                   join_running: bool, loaded: Any) -> None:
    on_logits = RANK["rec"].record_logits if "rec" in RANK else None  # no Recorder: a run without capture
    runner.generate(loaded, prompts, decode_steps, on_logits, prefill_chunk=prefill_chunk, prefix_cache=prefix_cache,
                    join_running=join_running)


def _collect_rank(loaded: Any) -> tuple[bytes, tuple[int, int | None]]:
    """The rank's tensors, and the model's kv heads with its query heads where the ranks hold padded ones
    (``ranks.gather``): on CPU, SGLang pads the kv heads to a multiple of the ranks, and the query heads with
    them, keeping the real counts as ``original_*`` (``adjust_config_with_unaligned_cpu_tp``)."""
    tensors = safetensors.torch.save({k: t.clone(memory_format=torch.contiguous_format)
                                      for k, t in collect_rank(runner.model(loaded)).items()})
    config = loaded.model_config.hf_config
    if hasattr(config, "original_total_num_kv_heads"):
        return tensors, (config.original_total_num_kv_heads, config.original_num_attention_heads)
    return tensors, (loaded.model_config.get_total_num_kv_heads(), None)
