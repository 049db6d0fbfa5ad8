"""Pure-torch stand-in for SGLang's kernel package (``sgl_kernel``) on CPU-only machines.

Why this exists
---------------
SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE=1``) imports two bookkeeping helpers from
``sgl_kernel`` unconditionally at module import time:

* ``sglang.srt.mem_cache.allocation``   -> ``assign_req_to_token_pool_cpu``
* ``sglang.kernels.ops.kvcache.cache_move`` -> ``copy_all_layer_kv_cache_cpu``

The CPU build of the kernel package is compiled from SGLang's source tree and is not
published on PyPI, so a plain CPU install of ``sglang`` cannot start. This module provides
those two helpers in plain torch (same semantics as SGLang's Triton fallbacks
``assign_req_to_token_pool`` and ``copy_all_layer_kv_cache_tiled``) so the engine can run
its own ``forward_native`` layer math for numerical parity tests.

It deliberately does NOT register ``torch.ops.sgl_kernel.convert_weight_packed``: SGLang
checks for that op to enable its Intel AMX weight-packing paths; with it absent every
layer keeps SGLang's reference ``forward_native`` implementation.

The speculative-decoding helpers that SGLang's CPU code imports by name exist here only
so those modules import; calling any of them raises ``NotImplementedError``. Any other
name is missing (``ImportError`` / ``AttributeError``), so optional-kernel probes fall back.

NEVER install this on a GPU machine: it would shadow the real ``sgl_kernel`` (CUDA
kernels) package. It is meant to be put on ``sys.path`` only inside the CPU SGLang
environment used by the parity harness.
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+parity.cpu.stub"
IS_PARITY_CPU_STUB = True

__all__ = [
    "assign_req_to_token_pool_cpu",
    "copy_all_layer_kv_cache_cpu",
]


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write KV-slot indices of a batch into the request -> token table, in place.

    For request ``i`` of the batch (in order):
    ``req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]] =
    out_cache_loc[o_i : o_i + end_offset[i] - start_offset[i]]``, where ``o_i`` is the sum
    of the lengths of requests ``0..i-1`` (``out_cache_loc`` is packed request by request).
    ``pool_len`` is the row length of ``req_to_token`` (its ``shape[1]``).
    """
    if req_to_token.dim() != 2 or req_to_token.shape[1] != pool_len:
        raise ValueError(
            f"req_to_token has shape {tuple(req_to_token.shape)}, expected [*, {pool_len}]"
        )
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    if not (len(rows) == len(starts) == len(ends)):
        raise ValueError("req_pool_indices, start_offset and end_offset differ in length")
    offset = 0
    for row, start, end in zip(rows, starts, ends):
        n = end - start
        if n <= 0:
            continue
        if end > pool_len:
            raise IndexError(f"end_offset {end} exceeds pool_len {pool_len}")
        req_to_token[row, start:end] = out_cache_loc[offset : offset + n].to(
            req_to_token.dtype
        )
        offset += n
    if offset > out_cache_loc.numel():
        raise IndexError("out_cache_loc is shorter than the requested spans")


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """Copy KV rows ``src_loc -> tgt_loc`` in every layer buffer, in place.

    ``data_ptrs[b]`` is the base address of buffer ``b`` (one per layer and K/V; uint64),
    ``strides[b]`` the size in bytes of one row (one token slot) of that buffer. Row
    ``src_loc[j]`` is copied to row ``tgt_loc[j]`` byte for byte. All source rows are read
    before any target row is written, so overlapping ``src``/``tgt`` sets are safe (as in
    SGLang's Triton kernel ``copy_all_layer_kv_cache_tiled``).
    """
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError("tgt_loc and src_loc differ in length")
    if src_loc.numel() == 0:
        return
    src = src_loc.to(torch.int64).reshape(-1)
    tgt = tgt_loc.to(torch.int64).reshape(-1)
    if int(src.min()) < 0 or int(tgt.min()) < 0:
        raise IndexError("negative KV location")
    nrows = int(torch.maximum(src.max(), tgt.max())) + 1
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist()):
        ptr, stride = int(ptr), int(stride)
        if ptr == 0 or stride <= 0:
            raise ValueError(f"invalid KV buffer pointer/stride ({ptr}, {stride})")
        # Alias (not copy) the first `nrows` rows of the buffer as a uint8 tensor.
        raw = (ctypes.c_uint8 * (nrows * stride)).from_address(ptr)
        buf = torch.frombuffer(raw, dtype=torch.uint8).view(nrows, stride)
        buf[tgt] = buf[src].clone()


def _speculative_unsupported(name: str):
    def _fn(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name}: speculative decoding is not supported by the parity "
            "CPU stand-in for sgl_kernel"
        )

    _fn.__name__ = name
    _fn.__qualname__ = name
    return _fn


# Names SGLang's CPU code imports at module level for speculative decoding
# (sglang/kernels/ops/speculative/*.py). Importable, never callable.
_SPECULATIVE_CPU_HELPERS = (
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_tree_kernel_efficient_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
    "verify_tree_greedy_cpu",
)
for _name in _SPECULATIVE_CPU_HELPERS:
    globals()[_name] = _speculative_unsupported(_name)
del _name
