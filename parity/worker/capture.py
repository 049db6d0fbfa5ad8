"""Engine-neutral capture machinery shared by the adapters.

Engines flatten a batch of prompts into one ``[num_tokens, ...]`` tensor and may
schedule prefill chunks and decode tokens of several prompts in one forward.
:class:`TokenRouter` attributes every token of a forward to ``(prompt, step)``
from its position and id alone, so adapters need no engine-internal batch
metadata. :class:`Recorder` cuts captured tensors along those segments into
canonical keys (see :mod:`parity.schema`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from parity import schema


class CaptureError(RuntimeError):
    """The engine's activations could not be mapped onto the canonical schema."""


@dataclass(frozen=True)
class Segment:
    prompt: int
    step: int
    start: int  # row range in the flattened forward
    end: int
    samples: bool  # the engine computes logits for the segment's last token


class TokenRouter:
    """Attributes the tokens of each flattened forward to prompts and steps.

    Requires what the strategies guarantee: prompts of distinct lengths, so a
    decode token's position names its prompt, and distinct prompts, so a
    prefill chunk's ids name its prompt.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], decode_steps: int):
        self.prompts = [list(p) for p in prompts]
        self.decode_steps = decode_steps
        self.prefilled = [0] * len(self.prompts)  # prompt tokens seen so far
        self.decoded = [0] * len(self.prompts)  # decode steps seen so far
        self._routed: set[int] = set()

    def route(self, positions: Sequence[int], input_ids: Sequence[int]) -> list[Segment]:
        segments: list[Segment] = []
        self._routed = set()  # a sequence contributes at most one segment per forward
        start = 0
        n = len(positions)
        while start < n:
            end = start + 1
            p0 = positions[start]
            while end < n and positions[end] == positions[end - 1] + 1 and self._is_prefill(p0, input_ids[start : end + 1]):
                end += 1
            segments.append(self._attribute(positions[start], list(input_ids[start:end]), start, end))
            start = end
        return segments

    def _is_prefill(self, p0: int, ids: Sequence[int]) -> bool:
        # Consecutive positions form one prefill chunk only while they spell a
        # prompt's next tokens; otherwise the next token starts a new segment
        # (e.g. decode tokens of two prompts at positions p and p+1).
        ids = list(ids)
        return any(self.prefilled[j] == p0 and p[p0 : p0 + len(ids)] == ids for j, p in enumerate(self.prompts))

    def _attribute(self, pos: int, ids: list[int], start: int, end: int) -> Segment:
        prefill = [
            j for j, p in enumerate(self.prompts)
            if self.prefilled[j] == pos and p[pos : pos + len(ids)] == ids
        ]
        decode = [
            j for j, p in enumerate(self.prompts)
            if len(ids) == 1 and self.prefilled[j] == len(p) and self.decoded[j] < self.decode_steps
            and len(p) + self.decoded[j] == pos
        ]
        candidates = [j for j in prefill + decode if j not in self._routed]
        if len(candidates) != 1:
            raise CaptureError(
                f"cannot attribute {len(ids)} token(s) at position {pos} (ids {ids[:8]}) to exactly one prompt "
                f"(candidates {candidates}); prompts must have distinct lengths and contents"
            )
        j = candidates[0]
        self._routed.add(j)
        if j in prefill:
            self.prefilled[j] += len(ids)
            return Segment(j, 0, start, end, samples=self.prefilled[j] == len(self.prompts[j]))
        self.decoded[j] += 1
        return Segment(j, self.decoded[j], start, end, samples=True)


def as_stored(t: torch.Tensor) -> torch.Tensor:
    """Detach and copy to CPU; low-precision floats are widened (losslessly) for numpy readers."""
    t = t.detach().to("cpu")
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.clone()


class Recorder:
    """Collects canonical tensors for one run of one model over a batch of prompts."""

    def __init__(self, prompts: Sequence[Sequence[int]], decode_steps: int, head_dim: int):
        self.router = TokenRouter(prompts, decode_steps)
        self.head_dim = head_dim
        self.layer: int | None = None
        self.segments: list[Segment] = []
        self.rows = 0
        self._chunks: dict[str, list[torch.Tensor]] = defaultdict(list)

    def begin_forward(self, positions: torch.Tensor, input_ids: torch.Tensor) -> None:
        pos = positions.reshape(-1).tolist()
        ids = input_ids.reshape(-1).tolist()
        self.rows = len(pos)
        self.segments = self.router.route(pos, ids)
        self.layer = None
        for s in self.segments:
            self._chunks[schema.key(s.step, s.prompt, schema.TOKEN_IDS)].append(torch.tensor(ids[s.start : s.end]))

    def enter_layer(self, index: int) -> None:
        self.layer = index

    def record(self, name: str, tensor: torch.Tensor) -> None:
        """Record a ``[tokens, ...]`` tensor of the current forward (padding rows are dropped)."""
        if tensor.shape[0] < self.rows:
            raise CaptureError(f"{name}: {tensor.shape[0]} rows for a forward of {self.rows} tokens")
        for s in self.segments:
            self._chunks[schema.key(s.step, s.prompt, name)].append(as_stored(tensor[s.start : s.end]))

    def record_layer(self, kind: str, tensor: torch.Tensor) -> None:
        if self.layer is None:
            raise CaptureError(f"{kind} captured outside any decoder layer")
        self.record(schema.layer_name(self.layer, kind), tensor)

    def record_heads(self, kind: str, flat: torch.Tensor) -> None:
        """Record q or k given flattened as ``[tokens, heads * head_dim]``."""
        self.record_layer(kind, flat.reshape(flat.shape[0], -1, self.head_dim))

    def record_logits(self, logits: torch.Tensor) -> None:
        """Record logits computed for the last token of each sampling segment, in batch order."""
        sampling = [s for s in self.segments if s.samples]
        if logits.shape[0] != len(sampling):
            raise CaptureError(f"logits has {logits.shape[0]} rows for {len(sampling)} sampled sequences")
        for row, s in enumerate(sampling):
            self._chunks[schema.key(s.step, s.prompt, "logits")].append(as_stored(logits[row : row + 1]))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self._chunks.items()}


def first(output: Any) -> torch.Tensor:
    """Modules return a tensor or a tuple whose first element is the tensor of interest."""
    return output[0] if isinstance(output, (tuple, list)) else output


def resolve(root: torch.nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


class Hooks:
    """Forward hooks registered on a live model, removed together."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def pre(self, module: torch.nn.Module, fn: Callable[..., Any], with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def post(self, module: torch.nn.Module, fn: Callable[..., Any], with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    def before_forward(self, module: torch.nn.Module, fn: Callable[..., Any]) -> None:
        """Call ``fn(*args, **kwargs)`` before ``module.forward``.

        For modules whose class replaces ``__call__`` (vLLM's compile decorator
        does), where forward pre-hooks never fire: shadow ``forward`` on the instance.
        """
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            fn(*args, **kwargs)
            return original(*args, **kwargs)

        module.forward = forward
        self._handles.append(_Unshadow(module))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class _Unshadow:
    def __init__(self, module: torch.nn.Module):
        self.module = module

    def remove(self) -> None:
        del self.module.forward


def hook_common(model: torch.nn.Module, rec: Recorder, layers: Sequence[torch.nn.Module], *,
                embed: torch.nn.Module, norm: torch.nn.Module, residual: Callable[[Any, tuple], torch.Tensor],
                tokens: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, attn: str = "self_attn",
                mlp: str = "mlp") -> Hooks:
    """Hooks every engine shares: embedding, layer boundaries, attention, MLP and final norm outputs.

    ``residual`` maps a decoder layer's raw output and positional arguments to the
    full residual stream: this is where each engine's layer-output convention is
    normalised (SGLang's needs the layer's ``forward_batch`` argument).
    ``tokens`` maps a module output to ``[tokens, ...]`` (e.g. drops a batch axis).
    """
    hooks = Hooks()
    hooks.post(embed, lambda m, a, out: rec.record("embed", tokens(first(out))))
    hooks.post(norm, lambda m, a, out: rec.record("final_norm", tokens(first(out))))
    for i, layer in enumerate(layers):
        hooks.pre(layer, lambda m, a, i=i: rec.enter_layer(i))
        hooks.post(layer, lambda m, a, out: rec.record_layer("residual", tokens(residual(out, a))))
        hooks.post(getattr(layer, attn), lambda m, a, out: rec.record_layer("attn_out", tokens(first(out))))
        hooks.post(getattr(layer, mlp), lambda m, a, out: rec.record_layer("mlp_out", tokens(first(out))))
    return hooks

def config_head_dim(checkpoint: str) -> int:
    """head_dim as transformers derives it: explicit ``head_dim`` or hidden_size / num_attention_heads."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def save(tensors: dict[str, torch.Tensor], out: str) -> dict[str, Any]:
    """Write captured tensors atomically; non-finite values are reported, not hidden."""
    import os

    from safetensors.torch import save_file

    non_finite = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    tmp = f"{out}.tmp"
    save_file({k: t.contiguous() for k, t in tensors.items()}, tmp)
    os.replace(tmp, out)
    return {"file": out, "tensors": len(tensors), "non_finite": non_finite}
