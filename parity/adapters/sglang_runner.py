"""SGLang (0.5.x) driven in-process with nothing but SGLang and torch: a bare ``ModelRunner``
(no server, scheduler, ports or tokenizer), its prefill and greedy decode (the prefill whole, or
chunked, from a radix-cached prefix and joining running requests as SGLang's scheduler serves them), and how to read
the residual stream off a decoder layer.

This half of the SGLang adapter imports nothing from parity: ``parity repro`` copies it
verbatim into a repro bundle, so a maintainer runs the same engine set-up without parity.
On CPU, SGLang needs ``SGLANG_USE_CPU_ENGINE=1`` before import, torchvision's op schemas
(its PyPI wheel's compiled ops do not load next to CPU torch) and an importable
``sgl_kernel`` (parity's CPU environment vendors a pure-torch stand-in,
``adapters/sglang_cpu_support``): :func:`prepare_cpu`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import time
from array import array
from typing import Any, Callable, NoReturn

import torch

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


def prepare_cpu() -> None:
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


def _free_port() -> int:
    """The ranks' process-group port, picked as ``PortArgs.init_new`` picks its ``nccl_port``; that also names five
    IPC files for a server's processes, left in /tmp, empty, never removed (SGLang 0.5.23): five an engine."""
    from sglang.srt.utils.network import get_free_port_below_ephemeral

    return get_free_port_below_ephemeral()


def load(checkpoint: str, dtype: str, device: str, prompts: list[list[int]], decode_steps: int,
         tensor_parallel: int = 1, page_size: int | None = None, tp_rank: int = 0,
         dist_port: int | None = None) -> Any:
    """The model-runner set-up of ``sglang.benchmark.one_batch.load_model``, minus the tokenizer: rank
    ``tp_rank`` of ``tensor_parallel``, every rank given the same ``dist_port`` (:class:`Ranks`), KV pages of
    ``page_size`` tokens (None: SGLang's default)."""
    from sglang.benchmark.one_batch import _init_process_global_configs
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.distributed import bootstrap
    from sglang.srt.model_executor.model_runner import ModelRunner
    from sglang.srt.runtime_context import SpawnRanks, get_device, get_model, publish, spawn_world_rank

    server_args = _server_args(checkpoint, dtype, device, prompts, decode_steps, tensor_parallel, page_size)
    if dist_port is None:
        dist_port = _free_port()
    publish(server_args, role="scheduler",
            ranks=SpawnRanks(world_rank=spawn_world_rank(server_args, tp_rank=tp_rank, pp_rank=0), gpu_id=tp_rank))
    _init_process_global_configs()
    model_config = ModelConfig.from_server_args(server_args)
    bootstrap.init_parallel_runtime(server_args=server_args, device=get_device().device, dist_port=dist_port)
    bootstrap.init_layer_runtime(model_config=model_config)
    runner = ModelRunner(model_config=model_config, mem_fraction_static=server_args.mem_fraction_static,
                         gpu_id=tp_rank, nccl_port=dist_port, server_args=server_args)
    if page_size not in (None, runner.page_size):  # a plain run compared as a paged one otherwise
        raise RuntimeError(f"SGLang set KV pages of {runner.page_size} tokens for this model, not the {page_size} "
                           f"asked for (not run)")
    if get_model().is_startup_weight_load_overlap:
        runner.start_startup_weight_load()
    runner.alloc_memory_pool()
    runner.init_attention_backends()
    runner.init_cuda_graphs()  # with graphs disabled, still sets up the eager runner forward() uses
    if get_model().is_startup_weight_load_overlap:
        runner.finalize_startup_weight_load()
    return runner


def _server_args(checkpoint: str, dtype: str, device: str, prompts: list[list[int]], decode_steps: int,
                 tensor_parallel: int, page_size: int | None) -> Any:
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(model_path=checkpoint,
                             **engine_args(dtype, device, prompts, decode_steps, tensor_parallel, page_size))
    server_args.resolve_once()
    return server_args


class Ranks:
    """Tensor-parallel ranks as SGLang's ``bench_one_batch`` runs them: a process per rank, each with a model
    runner of its own (:func:`load`), all fed the same batches in lockstep, so their collectives meet (every
    rank computes the whole logits, so they pick the same greedy tokens). ``apply(fn, *args)`` runs
    ``fn(*args, runner)`` in every rank and returns the results, rank by rank; ``fn``, ``setup`` and the results travel
    pickled (tensors as bytes, not as shared memory that dies with the rank). On CPU each rank's cores come from
    ``SGLANG_CPU_OMP_THREADS_BIND`` ("0|1"): SGLang binds them itself only with its Intel AMX kernels."""

    def __init__(self, checkpoint: str, dtype: str, device: str, prompts: list[list[int]], decode_steps: int,
                 ranks: int, page_size: int | None = None, setup: Callable[[], None] | None = None,
                 timeout: float = 600.0):
        import multiprocessing

        # A port number, not SGLang's PortArgs: unpickling those in a rank would import sglang before
        # prepare_cpu has run there.
        dist_port = _free_port()
        context = multiprocessing.get_context("spawn")
        self.timeout = timeout
        self._conns, self._procs = [], []
        for rank in range(ranks):
            conn, child = context.Pipe()
            proc = context.Process(target=_serve_rank, daemon=True, name=f"sglang-tp{rank}", args=(
                child, setup, (checkpoint, dtype, device, prompts, decode_steps, ranks, page_size, rank, dist_port)))
            proc.start()
            child.close()
            self._conns.append(conn)
            self._procs.append(proc)
        try:
            self._replies()  # every rank loaded
        except BaseException:
            self.close()
            raise

    @property
    def serving(self) -> bool:
        """False once the ranks are stopped (closed, or after a rank failed)."""
        return bool(self._conns)

    def apply(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        if not self.serving:
            raise RuntimeError("SGLang's tensor-parallel ranks are stopped")
        for conn in self._conns:
            conn.send((fn, args))
        return self._replies()

    def _replies(self) -> list[Any]:
        """Each rank's reply, rank by rank. The first rank to fail (an error, its death, no reply in time)
        raises, and all ranks are stopped: the others may be left waiting in a collective for it."""
        from multiprocessing.connection import wait

        pending, replies = dict(enumerate(self._conns)), {}
        deadline = time.monotonic() + self.timeout
        while pending:
            ready = wait([*pending.values(), *(self._procs[r].sentinel for r in pending)],
                         max(0.0, deadline - time.monotonic()))
            if not ready:
                self._fail(min(pending), f"no reply in {self.timeout:.0f} s")
            for rank, conn in list(pending.items()):
                if conn not in ready and self._procs[rank].sentinel not in ready:
                    continue
                try:
                    ok, value = conn.recv()
                except (EOFError, OSError):
                    self._fail(rank, "died", died=self._procs[rank])
                if not ok:
                    self._fail(rank, *value)
                replies[rank] = value
                del pending[rank]
        return [replies[rank] for rank in range(len(self._conns))]

    def _fail(self, rank: int, what: str, rank_traceback: str | None = None, died: Any = None) -> NoReturn:
        self.close()
        if died is not None:
            what += f" (exit code {died.exitcode}; its traceback is in this worker's log)"
        if rank_traceback:  # the failure's innermost frames, which say where in the engine it failed
            what += "\n" + "\n".join(rank_traceback.rstrip().splitlines()[-13:-1])
        raise RuntimeError(f"SGLang's tensor-parallel rank {rank}: {what}")

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []


def _serve_rank(conn: Any, setup: Callable[[], None] | None, load_args: tuple) -> None:
    """A rank's process (:class:`Ranks`): ``setup`` (once SGLang can be imported), load, then run what the parent
    sends until it sends None."""
    import traceback

    *args, ranks, page_size, rank, dist_port = load_args
    try:
        if args[2] == "cpu":
            prepare_cpu()
            binds = os.environ.get("SGLANG_CPU_OMP_THREADS_BIND", "").split("|")
            if len(binds) == ranks:
                cores = {int(c) for c in binds[rank].split(",")}
                os.sched_setaffinity(0, cores)
                torch.set_num_threads(len(cores))
        if setup is not None:
            setup()
        runner = load(*args, tensor_parallel=ranks, page_size=page_size, tp_rank=rank, dist_port=dist_port)
        conn.send((True, None))
    except Exception as exc:
        traceback.print_exc()
        conn.send((False, (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
        return
    while (message := conn.recv()) is not None:
        fn, fn_args = message
        try:
            reply = (True, fn(*fn_args, runner))
        except Exception as exc:
            traceback.print_exc()
            reply = (False, (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        conn.send(reply)


def engine_args(dtype: str, device: str, prompts: list[list[int]], decode_steps: int,
                tensor_parallel: int = 1, page_size: int | None = None) -> dict[str, Any]:
    """The ``ServerArgs`` of :func:`load` but the checkpoint's path."""
    return dict(
        **({} if page_size is None else {"page_size": page_size}),
        device=device, dtype=dtype, skip_tokenizer_init=True, random_seed=0, tp_size=tensor_parallel,
        # Reference attention on every device: it takes any dtype and head size, and
        # parity tests the port's layer math, not attention kernels.
        attention_backend="torch_native", sampling_backend="pytorch",
        disable_cuda_graph=True,  # hooks do not fire during graph replay
        # On CPU SGLang budgets the KV cache from host free memory measured before and after
        # loading: another engine starting meanwhile (vLLM, in the next worker) can eat a small
        # budget and fail the load. A wide budget is harmless: max_total_tokens caps the pool.
        disable_radix_cache=True, mem_fraction_static=0.25,
        max_total_tokens=max(1024, sum(len(p) + decode_steps + 1 for p in prompts)),
    )


def reload(runner: Any, checkpoint: str) -> None:
    """Load ``checkpoint``'s weights into ``runner``, built for a checkpoint of the same config (SGLang's own
    in-place update: the model's ``load_weights``, then its post-load processing), and free every KV slot."""
    ok, message = runner.weight_updater.update_weights_from_disk(checkpoint, "auto")
    if not ok:
        raise RuntimeError(f"SGLang could not update the weights: {message}")
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()


def model(runner: Any) -> torch.nn.Module:
    return runner.model


@torch.no_grad()
def generate(runner: Any, prompts: list[list[int]], decode_steps: int,
             on_logits: Callable[[torch.Tensor], None] | None = None, prefill_chunk: int | None = None,
             prefix_cache: bool = False, join_running: bool = False) -> None:
    """Greedy prefill (extend) and ``decode_steps`` decode steps with the KV cache; ``on_logits`` sees each
    forward's logits, computed only for each request's last token.

    Plainly, all prompts in one batched prefill, then batched decode steps. Otherwise the prompts one after
    another, each served as SGLang's scheduler serves a request: a prefill of at most ``prefill_chunk`` tokens
    per forward, every later chunk extending the request's own KV (its row of ``req_to_token``), and under
    ``prefix_cache`` a radix cache that holds each prompt once prefilled, so a later prompt starts from the KV
    slots of the prefix it shares (raises if a prompt after the first finds none). With ``join_running``, a
    prompt arrives while the ones before it decode, as the scheduler serves it with ``--enable-mixed-chunk``:
    each forward of its prefill also runs the running requests' next decode step (``mix_with_running``, a MIXED
    forward), and once prefilled it decodes with them (else each prompt decodes alone before the next)."""
    if prefill_chunk is None and not prefix_cache and not join_running:
        batch = _batch(runner, [_request(i, ids, decode_steps) for i, ids in enumerate(prompts)])
        batch.prepare_for_extend()
        _decode(runner, batch, _forward(runner, batch, on_logits), decode_steps, on_logits)
        return
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.common import checkpoint_kv_cache
    from sglang.srt.mem_cache.radix_cache import RadixCache
    from sglang.srt.runtime_context import get_schedule

    # The scheduler's tree cache; disabled, it only hands a chunked request its own row back.
    tree = RadixCache(CacheInitParams(disable=not prefix_cache, req_to_token_pool=runner.req_to_token_pool,
                                      token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator,
                                      page_size=get_schedule().page_size))
    running: Any = None  # under join_running, the batch of requests decoding
    left: dict[str, int] = {}  # their decode steps still to run
    for i, ids in enumerate(prompts):
        req = _request(i, ids, decode_steps)
        req.init_next_round_input(tree)  # the prefix match (Scheduler.get_new_batch_prefill)
        if prefix_cache and i and not req.prefix_len:
            raise RuntimeError(f"SGLang's radix cache was not hit: prompt {i} shares a prefix with prompt 0 "
                               f"and matched no cached token")
        req.lock = tree.lock(req.last_node)
        while True:
            # PrefillAdder.add_one_req / add_chunked_req: this round extends [prefix_len, extend_end).
            req.extend_end = min(len(ids), req.prefix_len + (prefill_chunk or len(ids)))
            batch = _batch(runner, [req], tree)
            batch.prepare_for_extend()
            if running is not None:
                _mix(batch, running)
            logits = _forward(runner, batch, on_logits)
            # The scheduler's after every prefill forward (process_batch_result_prefill, stash_chunked_request):
            # the tree keeps what is computed, for the prompts after this one; the next chunk resumes after it.
            checkpoint_kv_cache(req, tree)
            prefilled = req.extend_end == len(ids)
            if join_running:
                running = _still_running(batch, logits, left, req if prefilled else None, decode_steps)
            if prefilled:
                break
            req.init_next_round_input()
        if not join_running:
            _decode(runner, batch, logits, decode_steps, on_logits)
    while running is not None:
        running.prepare_for_decode()
        running = _still_running(running, _forward(runner, running, on_logits), left, None, decode_steps)


def _mix(batch: Any, running: Any) -> None:
    """Make ``batch``, a prefill, also run ``running``'s next decode step (Scheduler.get_new_batch_prefill
    under ``enable_mixed_chunk``); its tokens, which the scheduler's overlap relay would fill in, set here."""
    running.prepare_for_decode()
    decoding = running.input_ids
    batch.mix_with_running(running)
    batch.input_ids = torch.cat([batch.prefill_input_ids_cpu.to(batch.device), decoding])
    batch.prefill_input_ids_cpu = None


def _still_running(batch: Any, logits: torch.Tensor, left: dict[str, int], prefilled: Any,
                   decode_steps: int) -> Any:
    """``batch`` after a forward, cut to the requests with decode steps still to run (the scheduler's
    filter_batch before it merges a prefill into its running batch), their next tokens set; None if none is.
    ``prefilled`` is the request whose prefill that forward finished; a request still mid-prefill is not kept."""
    batch.input_ids = logits.argmax(-1).to(torch.int64)
    keep = []
    for k, req in enumerate(batch.reqs):
        if req is prefilled:
            left[req.rid] = decode_steps
        elif req.rid in left:
            left[req.rid] -= 1
        else:
            continue
        if left[req.rid]:
            keep.append(k)
    if not keep:
        return None
    batch.filter_batch(keep_indices=keep)
    return batch


def _request(i: int, ids: list[int], decode_steps: int) -> Any:
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    req = Req(rid=str(i), origin_input_text="", origin_input_ids=array("q", ids),
              sampling_params=SamplingParams(temperature=0, max_new_tokens=decode_steps + 1))
    req.full_untruncated_fill_ids = req.origin_input_ids
    req.logprob_start_len = -1  # no prompt logprobs
    req.extend_end = len(req.origin_input_ids)
    return req


def _batch(runner: Any, reqs: list[Any], tree_cache: Any = None) -> Any:
    """A batch of ``reqs``; without a tree cache, one that only allocates (no prefix reuse)."""
    from sglang.benchmark.one_batch import TreeCacheNamespace
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.runtime_context import get_schedule
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    if tree_cache is None:
        tree_cache = TreeCacheNamespace(page_size=get_schedule().page_size, device=runner.device,
                                        token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator)
    return ScheduleBatch.init_new(
        reqs=reqs, req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator, tree_cache=tree_cache,
        model_config=runner.model_config, enable_overlap=False, spec_algorithm=SpeculativeAlgorithm.NONE,
    )


def _forward(runner: Any, batch: Any, on_logits: Callable[[torch.Tensor], None] | None) -> torch.Tensor:
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    if batch.input_ids is None:  # staged on the host for the scheduler, which is not running
        batch.input_ids = batch.prefill_input_ids_cpu.to(batch.device)
        batch.prefill_input_ids_cpu = None
    forward_batch = ForwardBatch.init_new(batch, runner, return_hidden_states_before_norm=False)
    logits = runner.forward(forward_batch).logits_output.next_token_logits
    if on_logits is not None:
        on_logits(logits)
    return logits


def _decode(runner: Any, batch: Any, logits: torch.Tensor, decode_steps: int,
            on_logits: Callable[[torch.Tensor], None] | None) -> None:
    """Greedy decode steps of a prefilled ``batch``, from its prefill's ``logits``."""
    for _ in range(decode_steps):
        batch.input_ids = logits.argmax(-1).to(torch.int64)
        batch.prepare_for_decode()
        logits = _forward(runner, batch, on_logits)


def takes_residual(layer: torch.nn.Module) -> bool:
    """Whether a decoder layer is handed the residual (fused add+norm ports)."""
    return "residual" in inspect.signature(layer.forward).parameters


def residual_stream(layer: torch.nn.Module, output: Any, args: tuple) -> torch.Tensor:
    """The full residual stream after a decoder layer, from its forward hook's ``args`` and ``output``.

    A layer on SGLang's residual stream returns only its pending contribution and keeps the
    residual in ``forward_batch.residual_stream``; ports not yet moved onto it (Gemma, Gemma2)
    return ``(hidden_states, residual)``, whose sum is the stream; StableLM returns
    ``(stream, mid-layer residual)``; GPT-J adds its own residual.
    """
    if isinstance(output, tuple):
        if not takes_residual(layer):
            return output[0]
        hidden, residual = output
        return hidden if residual is None else hidden + residual  # MiniCPM3 adds its own residual
    # Decoder layers are called as layer(positions, hidden_states, forward_batch, ...) (GPT-2's as
    # layer(hidden_states, forward_batch); OPT's and Phi's by keyword, which the arguments hold last).
    forward_batch = next((a for a in args if hasattr(a, "residual_stream")), None)
    if forward_batch is None or forward_batch.residual_stream is None:
        return output
    from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

    return residual_batch.snapshot(output, forward_batch)

