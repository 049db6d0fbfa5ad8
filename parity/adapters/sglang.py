"""SGLang (0.5.x), in-process: a bare ``ModelRunner`` (no server, scheduler, ports or
tokenizer) driven by this module, so hooks go on the live model.

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
- the rotary module returns q/k flattened to ``[tokens, heads * head_dim]``;
- a batch is flattened to ``[num_tokens, ...]``, requests in order; logits are computed
  only for each request's last token (``next_token_logits``);
- a mixture-of-experts block selects its experts in a ``topk`` module of its own, after
  the router linear (``gate``).

On CPU, SGLang needs ``SGLANG_USE_CPU_ENGINE=1`` before import, torchvision's op schemas
(its PyPI wheel's compiled ops do not load next to CPU torch) and an importable
``sgl_kernel``: parity's CPU environment vendors a pure-torch stand-in
(``adapters/sglang_cpu_support``); this module only checks that it is there.

The CUDA path (``--device cuda``) is written but untested on a GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from array import array
from typing import Any, Mapping

import torch

from parity.adapters.base import EngineAdapter
from parity.worker.capture import (Hooks, NullRecorder, Parts, Recorder, first, forward_inputs, hook_common,
                                    hook_rotaries, takes_residual)
from parity.worker.contract import RunRequest

# Where ``layers.{i}.residual`` comes from, read at every capture. "snapshot": SGLang's
# residual snapshot, the full residual stream (what transformers' layer returns). "raw":
# the decoder layer's return value, only its pending contribution; a patch file setting
# ``parity.adapters.sglang.RESIDUAL_FROM = "raw"`` shows that ignoring the convention is
# reported as a divergence at ``layers.0.residual``.
RESIDUAL_FROM = "snapshot"

# Schemas of torchvision 0.28's compiled ops. With them defined before torchvision is
# first imported, its pure-Python modules import, which ``import sglang`` needs.
_TORCHVISION_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
    "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
    "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, "
    "SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
)
_torchvision_schemas: torch.library.Library | None = None  # the definitions live as long as this object


def _prepare_cpu() -> None:
    """Make ``import sglang`` work next to CPU torch; must run before sglang is imported."""
    global _torchvision_schemas
    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"  # read at import time
    if _torchvision_schemas is None and not hasattr(torch.ops.torchvision, "nms"):
        _torchvision_schemas = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_OP_SCHEMAS:
            _torchvision_schemas.define(schema)
    if importlib.util.find_spec("sgl_kernel") is None:
        raise ImportError(
            "SGLang's CPU engine needs a module named sgl_kernel, and none is importable. parity's "
            "managed CPU environment vendors a pure-torch stand-in from parity/adapters/sglang_cpu_support; "
            "in your own environment, copy that sgl_kernel directory into site-packages (CPU machines only: "
            "it would shadow the real CUDA kernels) or install a CPU build of sglang-kernel."
        )


def _residual(layer: torch.nn.Module, output: Any, args: tuple) -> torch.Tensor:
    if RESIDUAL_FROM == "raw":
        return first(output)
    if RESIDUAL_FROM != "snapshot":
        raise ValueError(f"RESIDUAL_FROM must be 'snapshot' or 'raw', not {RESIDUAL_FROM!r}")
    if isinstance(output, tuple):
        if not takes_residual(layer):  # StableLM: (stream, mid-layer residual)
            return output[0]
        # Ports not (yet) on the residual stream (e.g. Gemma, Gemma2) keep the older
        # vLLM-like convention: (hidden_states, residual), the stream is their sum.
        hidden, residual = output
        return hidden + residual
    # Decoder layers are called as layer(positions, hidden_states, forward_batch, ...).
    forward_batch = args[2]
    if forward_batch.residual_stream is None:  # a port that adds its own residual (GPT-J)
        return output
    from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

    return residual_batch.snapshot(output, forward_batch)


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    # Decoder layers are called as layer(positions, hidden_states, forward_batch, residual).
    return args[1] if len(args) > 1 else kwargs["hidden_states"]


class Adapter(EngineAdapter[Any]):
    engine = "sglang"

    def __init__(self, device: str = "cpu"):
        if device == "cpu":
            _prepare_cpu()
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

    def unsupported_features(self) -> dict[str, str]:
        """Read from the engine's own code: a torch_native attention backend that never reads a
        layer's ``logit_cap`` computes plain softmax attention, so soft-capped models would run,
        but wrongly (it takes any head size); a Qwen2-MoE block that gates its shared expert with
        the Triton kernel ``fused_gate_sigmoid_mul_add`` outside the Intel AMX backend (which
        parity's CPU stand-in leaves off) fails on CPU, where Triton has no driver."""
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
        return lacking

    def load(self, request: RunRequest) -> Any:
        tokens = sum(len(p) + request.decode_steps + 1 for p in request.prompts)
        return self._load(request.checkpoint, request.dtype, max_total_tokens=max(1024, tokens))

    def hook(self, loaded: Any, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        return self._install(Parts(loaded.model, modules), rec)

    def generate(self, loaded: Any, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        with torch.no_grad():
            self._generate(loaded, rec, request.prompts, request.decode_steps)

    def teardown(self, loaded: Any) -> None:
        from sglang.srt.distributed.parallel_state import cleanup_dist_env_and_memory
        from sglang.srt.layers.rotary_embedding import factory as rope_factory
        from sglang.srt.runtime_context import reset_context

        if loaded is not None:
            loaded.req_to_token_pool.clear()
            loaded.token_to_kv_pool_allocator.clear()
            del loaded  # unreachable before the gc.collect() below, so the model's memory goes now
        cleanup_dist_env_and_memory()
        reset_context()  # the published ServerArgs and ranks
        rope_factory._ROPE_DICT.clear()
        gc.collect()

    def _load(self, checkpoint: str, dtype: str, max_total_tokens: int):
        """The model-runner set-up of ``sglang.benchmark.one_batch.load_model``, minus the tokenizer."""
        from sglang.benchmark.one_batch import _init_process_global_configs
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.distributed import bootstrap
        from sglang.srt.model_executor.model_runner import ModelRunner
        from sglang.srt.runtime_context import SpawnRanks, get_device, get_model, publish, spawn_world_rank
        from sglang.srt.server_args import PortArgs, ServerArgs

        server_args = ServerArgs(
            model_path=checkpoint, device=self.device, dtype=dtype, skip_tokenizer_init=True, random_seed=0,
            # Reference attention on every device: it takes any dtype and head size, and
            # parity tests the port's layer math, not attention kernels.
            attention_backend="torch_native", sampling_backend="pytorch",
            disable_cuda_graph=True,  # hooks do not fire during graph replay
            # On CPU SGLang budgets the KV cache from host free memory measured before and after
            # loading: another engine starting meanwhile (vLLM, in the next worker) can eat a small
            # budget and fail the load. A wide budget is harmless: max_total_tokens caps the pool.
            disable_radix_cache=True, mem_fraction_static=0.25, max_total_tokens=max_total_tokens,
        )
        server_args.resolve_once()
        port_args = PortArgs.init_new(server_args)
        publish(server_args, role="scheduler",
                ranks=SpawnRanks(world_rank=spawn_world_rank(server_args, tp_rank=0, pp_rank=0), gpu_id=0))
        _init_process_global_configs()
        model_config = ModelConfig.from_server_args(server_args)
        bootstrap.init_parallel_runtime(server_args=server_args, device=get_device().device,
                                        dist_port=port_args.nccl_port)
        bootstrap.init_layer_runtime(model_config=model_config)
        runner = ModelRunner(model_config=model_config, mem_fraction_static=server_args.mem_fraction_static,
                             gpu_id=0, nccl_port=port_args.nccl_port, server_args=server_args)
        if get_model().is_startup_weight_load_overlap:
            runner.start_startup_weight_load()
        runner.alloc_memory_pool()
        runner.init_attention_backends()
        runner.init_cuda_graphs()  # with graphs disabled, still sets up the eager runner forward() uses
        if get_model().is_startup_weight_load_overlap:
            runner.finalize_startup_weight_load()
        return runner

    @staticmethod
    def _install(parts: Parts, rec: Recorder) -> Hooks:
        hooks = hook_common(rec, parts, layer_input=_layer_input, residual=_residual)
        hooks.pre(parts.decoder, lambda m, a, kw: rec.begin_forward(*forward_inputs(a, kw)), with_kwargs=True)
        hook_rotaries(hooks, rec, parts)
        for _, block in parts.sparse_blocks():
            # The block's TopK module returns (weights, experts, router logits).
            hooks.post(block.topk, lambda m, a, out: rec.record_routing(out.topk_weights, out.topk_ids,
                                                                      out.router_logits.shape[-1]))
        return hooks

    @staticmethod
    def _generate(runner, rec: Recorder | NullRecorder, prompts: list[list[int]], decode_steps: int) -> None:
        """One batched prefill (extend) of all prompts, then greedy decode steps with the KV cache."""
        from sglang.benchmark.one_batch import TreeCacheNamespace
        from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch
        from sglang.srt.runtime_context import get_schedule
        from sglang.srt.sampling.sampling_params import SamplingParams
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        reqs = []
        for i, ids in enumerate(prompts):
            req = Req(rid=str(i), origin_input_text="", origin_input_ids=array("q", ids),
                      sampling_params=SamplingParams(temperature=0, max_new_tokens=decode_steps + 1))
            req.full_untruncated_fill_ids = req.origin_input_ids
            req.logprob_start_len = -1  # no prompt logprobs
            req.extend_end = len(req.origin_input_ids)
            reqs.append(req)
        batch = ScheduleBatch.init_new(
            reqs=reqs, req_to_token_pool=runner.req_to_token_pool,
            token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator,
            tree_cache=TreeCacheNamespace(page_size=get_schedule().page_size, device=runner.device,
                                          token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator),
            model_config=runner.model_config, enable_overlap=False, spec_algorithm=SpeculativeAlgorithm.NONE,
        )
        batch.prepare_for_extend()
        if batch.input_ids is None:  # staged on the host for the scheduler, which is not running
            batch.input_ids = batch.prefill_input_ids_cpu.to(batch.device)
            batch.prefill_input_ids_cpu = None
        def forward() -> torch.Tensor:
            forward_batch = ForwardBatch.init_new(batch, runner, return_hidden_states_before_norm=False)
            logits = runner.forward(forward_batch).logits_output.next_token_logits
            rec.record_logits(logits)
            return logits

        logits = forward()  # prefill
        for _ in range(decode_steps):
            batch.input_ids = logits.argmax(-1).to(torch.int64)
            batch.prepare_for_decode()
            logits = forward()

