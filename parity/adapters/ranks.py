"""Capture under tensor parallelism, for every engine whose ranks are processes of their own: each rank
records into a Recorder of its own (installed and collected by functions the engine runs in every rank),
and the ranks' tensors are gathered into the canonical ones.

Ranks hold a share of the q and k heads (:func:`gather` says how) and every other tensor whole, except that an
engine may leave a layer's attention or MLP output unreduced (a partial sum per rank), reducing it at the
layer's boundary instead (SGLang's stage boundaries; vLLM's and SGLang's Cohere ports reduce a parallel block's
attention and MLP outputs once, summed): such outputs are summed over the ranks. Where the ranks still differ
on the layer's residual stream, nothing reduced them: that is a port's bug, and each tensor is rank 0's.
"""

from __future__ import annotations

import os
from functools import cache, partial
from typing import Any, Callable, Mapping

import torch

from parity import schema
from parity.worker.capture import Hooks, Parts, Recorder

Install = Callable[[Parts, Recorder], Hooks]

RANK: dict[str, Any] = {}
"""A rank's Recorder and hooks, between :func:`install_rank` and :func:`collect_rank`."""

UNREDUCED_KINDS = ("attn_out", "mlp_out")
"""The tensors an engine may hand on unreduced, to be reduced at the layer's boundary."""


def thread_binds(ranks: int) -> str:
    """One OpenMP thread group per rank, this process's cores split evenly: "0|1" for two ranks on two cores
    (vLLM's ``VLLM_CPU_OMP_THREADS_BIND``, SGLang's ``SGLANG_CPU_OMP_THREADS_BIND``)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise RuntimeError(f"tensor_parallel={ranks} needs a core per rank; this process may use {len(cores)}")
    per = len(cores) // ranks
    return "|".join(",".join(map(str, cores[r * per : (r + 1) * per])) for r in range(ranks))


def install_rank(install: Install, prompts: list[list[int]], decode_steps: int, head_dim: int, joining: bool,
                 modules: Mapping[str, str], model: torch.nn.Module) -> None:
    """In a rank: hook ``model`` (with the engine adapter's ``install``) into a Recorder of the rank's own, made
    as the adapter's (``Recorder``'s arguments)."""
    rec = Recorder(prompts, decode_steps, head_dim, joining)
    RANK.update(rec=rec, hooks=install(Parts(model, dict(modules)), rec))


def collect_rank(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """In a rank: remove the hooks; the rank's tensors."""
    RANK.pop("hooks").remove()
    return RANK.pop("rec").tensors()


def gather(shards: list[dict[str, torch.Tensor]], kv_heads: int, heads: int | None = None) -> dict[str, torch.Tensor]:
    """The canonical tensors from every rank's (in rank order).

    Ranks hold their share of the q and k heads, kv heads replicated over ``ranks / kv_heads`` ranks when there
    are fewer of them than ranks (vLLM). With ``heads``, the model's real query heads, ranks instead hold heads
    padded to split evenly, appended after the real ones (SGLang on CPU pads the kv heads to a multiple of the
    ranks, and the query heads with them): the ranks' heads are concatenated and cut to the real ``heads`` and
    ``kv_heads``. A layer's attention or MLP output that differs between ranks while the ranks agree on the
    layer's residual stream is a partial sum reduced at the layer's boundary, and the ranks' are added; one that
    every rank holds alike was reduced in the module; one that differs along with the residual stream was never
    reduced (a port's bug, shown where it starts: rank 0's partial output)."""
    ranks = len(shards)
    gathered = dict(shards[0])
    agreed = cache(partial(_alike, shards))  # a layer's residual stream, asked for attn_out and mlp_out
    for key in gathered:
        kind = schema.parse_key(key)[2].rsplit(".", 1)[-1]  # layers.{i}.{kind}, or a tensor of no layer
        if kind in ("q_rot", "k_rot") and heads is not None:
            real = heads if kind == "q_rot" else kv_heads
            gathered[key] = torch.cat([shard[key] for shard in shards], dim=1)[:, :real]
        elif kind == "q_rot" or (kind == "k_rot" and kv_heads >= ranks):
            gathered[key] = torch.cat([shard[key] for shard in shards], dim=1)
        elif kind == "k_rot":
            gathered[key] = torch.cat([shards[h * ranks // kv_heads][key] for h in range(kv_heads)], dim=1)
        elif kind in UNREDUCED_KINDS and not _alike(shards, key) and agreed(_residual(key)):
            gathered[key] = torch.stack([shard[key] for shard in shards]).sum(0)
    return gathered


def _alike(shards: list[dict[str, torch.Tensor]], key: str) -> bool:
    return key in shards[0] and all(torch.equal(s[key], shards[0][key]) for s in shards)


def _residual(key: str) -> str:
    """The key of the residual stream after the layer of ``key`` (a layer's tensor), at its step and prompt."""
    step, prompt, name = schema.parse_key(key)
    return schema.key(step, prompt, schema.layer_name(schema.parse_name(name).layer, "residual"))
