"""vLLM driven in-process with nothing but vLLM and torch: an ``LLM`` for a checkpoint, its
greedy generation with the logits of every forward, and how to read the residual stream
off a decoder layer.

This half of the vLLM adapter imports nothing from parity: ``parity repro`` copies it
verbatim into a repro bundle, so a maintainer runs the same engine set-up without parity.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable

# Must be set before vllm is imported: in-process, so hooks go on the live model.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far too much

import torch


def load(checkpoint: str, dtype: str, device: str, prompts: list[list[int]], decode_steps: int,
         tensor_parallel: int = 1, prefill_chunk: int | None = None, prefix_cache: bool = False,
         block_size: int | None = None) -> Any:
    """An ``LLM`` for the checkpoint: ``prefill_chunk`` tokens per forward at most (chunked prefill), the
    prefix cache on or off, KV blocks of ``block_size`` tokens (None: vLLM's default)."""
    from vllm import LLM

    return LLM(model=checkpoint, **engine_args(checkpoint, dtype, device, prompts, decode_steps, tensor_parallel,
                                               prefill_chunk, prefix_cache, block_size))


def engine_args(checkpoint: str, dtype: str, device: str, prompts: list[list[int]], decode_steps: int,
                tensor_parallel: int = 1, prefill_chunk: int | None = None, prefix_cache: bool = False,
                block_size: int | None = None) -> dict[str, Any]:
    """The ``LLM`` arguments of :func:`load` but the checkpoint's path."""
    longest = max(len(p) for p in prompts) + decode_steps + 1
    return dict(
        tensor_parallel_size=tensor_parallel, distributed_executor_backend="mp" if tensor_parallel > 1 else None,
        skip_tokenizer_init=True, dtype=dtype, enforce_eager=True, seed=0,
        # vLLM refuses a token budget below max_num_seqs (one token of each running sequence); a chunked prefill
        # serves the prompts one by one anyway, so a chunk smaller than the batch only caps how many may run.
        max_model_len=max(longest, 64), max_num_seqs=max(min(len(prompts), prefill_chunk or len(prompts)), 1),
        # A budget below a prompt's length splits its prefill over several forwards. The prefix cache of a
        # hybrid (Mamba) model requires chunked prefill on ("mamba cache mode 'align'"): on, under a budget no
        # prompt reaches, for every prefix-cached run.
        enable_chunked_prefill=prefill_chunk is not None or prefix_cache,
        max_num_batched_tokens=prefill_chunk or max(2048, longest * len(prompts)),
        enable_prefix_caching=prefix_cache, block_size=block_size,
        # On CPU this is the fraction of RAM reserved; the default 0.92 fails.
        gpu_memory_utilization=0.1 if device == "cpu" else 0.3,
        load_format="safetensors", trust_remote_code=False,
        attention_config=_cpu_mla_backend(checkpoint, dtype, device),
    )


def reload(llm: Any, checkpoint: str) -> None:
    """Load ``checkpoint``'s weights into ``llm``, built for a checkpoint of the same config, and forget the KV
    cached for the old weights. vLLM's in-place reload runs the model's own ``load_weights`` over the checkpoint,
    then each layer's post-load processing, as the first load did."""
    llm.collective_rpc("reload_weights", kwargs={"weights_path": checkpoint})
    llm.apply_model(_reprocess_shared)
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM did not reset its prefix cache (requests still running)")


def _reprocess_shared(model: torch.nn.Module) -> None:
    """Process again every layer whose weight is another layer's (a tied LM head holds the embedding's): vLLM's
    in-place reload processes only the layers it loaded weights into, and the tied head, whose weight the
    checkpoint does not name, would keep what its processing derived from the old weight (on CPU its GEMM's
    packed copy: the old logits, measured on 0.32). Other shared parameters (GLM-4-MoE's router bias, which
    the experts' router also holds) are read as they are at every forward and reloaded in place. Only the
    embedding's processing is known to be safe to repeat; any other layer fails the reload."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    holders: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            holders[id(param)] = holders.get(id(param), 0) + 1
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is None or holders[id(weight)] == 1:
            continue
        method = getattr(module, "quant_method", None)
        if not isinstance(method, UnquantizedEmbeddingMethod):
            raise RuntimeError(f"{type(module).__name__} shares its weight and is not an unquantized embedding: "
                               f"its processing after a reload is not known to be safe")
        method.process_weights_after_loading(module)


def _cpu_mla_backend(checkpoint: str, dtype: str, device: str) -> dict[str, str] | None:
    """vLLM's reference MLA backend for a multi-head latent attention model in float32 on CPU. vLLM prefers its
    AMX MLA backend wherever the CPU has AMX tiles (``CpuPlatform.get_attn_backend_cls``), and that backend packs
    weights in bf16/fp16 only (``amx_mla.py``: ``convert_weight_packed`` raises "expect weight to be bfloat16,
    float16, ..." at load); CPU_MLA, which vLLM takes when asked, runs float32. None: vLLM's own choice."""
    import json
    from pathlib import Path

    latent = json.loads((Path(checkpoint) / "config.json").read_text()).get("kv_lora_rank") is not None
    return {"backend": "CPU_MLA"} if device == "cpu" and dtype == "float32" and latent else None


def model(llm: Any) -> torch.nn.Module:
    """The live model (in-process, ``apply_model`` hands back the object itself)."""
    (live,) = llm.apply_model(lambda m: m)
    return live


def generate(llm: Any, prompts: list[list[int]], decode_steps: int,
             on_logits: Callable[[torch.Tensor], None] | None = None, one_by_one: bool = False,
             join_running: bool = False) -> list[Any]:
    """Greedy prefill and ``decode_steps`` decode steps, the prompts batched, ``one_by_one`` or each joining the
    running batch (``join_running``: added once the one before it has its first token); ``on_logits`` sees each
    forward's logits, computed only for the tokens that are sampled. vLLM's outputs, per prompt."""
    from vllm import SamplingParams

    hooks = [] if on_logits is None else \
        llm.apply_model(lambda m: m.logits_processor.register_forward_hook(lambda mod, a, out: on_logits(out)))
    params = SamplingParams(temperature=0.0, max_tokens=decode_steps + 1, ignore_eos=True, detokenize=False)
    requests = [{"prompt_token_ids": list(p)} for p in prompts]
    try:
        if join_running:
            return _joining(llm.llm_engine, requests, params)
        if one_by_one:
            return [out for r in requests for out in llm.generate([r], params, use_tqdm=False)]
        return llm.generate(requests, params, use_tqdm=False)
    finally:
        for h in hooks:
            h.remove()


def _joining(engine: Any, requests: list[dict[str, Any]], params: Any) -> list[Any]:
    """Serve ``requests`` through the engine's own step loop (what ``LLM.generate`` runs), each added once the
    one before it has its first token: its prefill is then scheduled with the running requests' decode steps."""
    waiting = list(enumerate(requests))
    finished: dict[str, Any] = {}

    def arrive() -> str:
        i, request = waiting.pop(0)
        engine.add_request(str(i), request, params)
        return str(i)

    newest = arrive()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
            if waiting and out.request_id == newest and out.outputs[0].token_ids:
                newest = arrive()
    return [finished[str(i)] for i in range(len(requests))]


def takes_residual(layer: torch.nn.Module) -> bool:
    """Whether a decoder layer is handed the residual (fused add+RMSNorm ports)."""
    return "residual" in inspect.signature(layer.forward).parameters


def residual_stream(layer: torch.nn.Module, output: Any, args: tuple) -> torch.Tensor:
    """The full residual stream after a decoder layer, from its forward hook's ``args`` and ``output``.

    A layer handed the residual returns ``(hidden_states, residual)``, whose sum is the
    stream; one that is not (StableLM, GPT-J ports) returns the stream itself, first.
    """
    if not takes_residual(layer):
        return output[0] if isinstance(output, (tuple, list)) else output
    hidden, residual = output
    return hidden if residual is None else hidden + residual
