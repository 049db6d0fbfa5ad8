"""Engine-neutral capture machinery shared by the adapters: :class:`Recorder`
cuts captured tensors along the segments :class:`~parity.worker.routing.TokenRouter`
finds into canonical keys (see :mod:`parity.schema`), and :class:`Hooks` puts
them on a live model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import torch

from parity import schema
from parity.worker.routing import CaptureError, Segment, TokenRouter


def as_stored(t: torch.Tensor) -> torch.Tensor:
    """Detach and copy to CPU; low-precision floats are widened (losslessly) for numpy readers."""
    t = t.detach().to("cpu")
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.clone()


class Recorder:
    """Collects canonical tensors for one run of one model over a batch of prompts.

    Under a prefix-cache hit the engine computes only a prompt's positions after
    the cached ones. Those are what is compared; the cached positions' rows are
    taken from the prompt whose prefill computed them (the segment's ``donor``),
    so every prompt still has one row per token, as the canonical schema asks.
    A wrong reuse of cached KV shows in the computed positions' attention.

    ``joining``: the prompts were asked to join a running batch; a run in which no forward held both a prefill and
    a decode step never did what it was asked, and its tensors are refused rather than compared as if it had.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], decode_steps: int, head_dim: int, joining: bool = False):
        self.router = TokenRouter(prompts, decode_steps)
        self.head_dim = head_dim
        self.joining = joining
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
            self._append(s, schema.TOKEN_IDS, torch.tensor(ids[s.start : s.end]))

    def enter_layer(self, index: int) -> None:
        self.layer = index

    def record(self, name: str, tensor: torch.Tensor) -> None:
        """Record a ``[tokens, ...]`` tensor of the current forward (padding rows are dropped)."""
        if tensor.shape[0] < self.rows:
            raise CaptureError(f"{name}: {tensor.shape[0]} rows for a forward of {self.rows} tokens")
        for s in self.segments:
            self._append(s, name, as_stored(tensor[s.start : s.end]))

    def _append(self, s: Segment, name: str, rows: torch.Tensor) -> None:
        chunks = self._chunks[schema.key(s.step, s.prompt, name)]
        if s.cached:
            chunks.append(torch.cat(self._chunks[schema.key(0, s.donor, name)])[: s.cached])
        chunks.append(rows)

    def record_layer(self, kind: str, tensor: torch.Tensor) -> None:
        if self.layer is None:
            raise CaptureError(f"{kind} captured outside any decoder layer")
        self.record(schema.layer_name(self.layer, kind), tensor)

    def record_heads(self, kind: str, flat: torch.Tensor) -> None:
        """Record q or k given flattened as ``[tokens, heads * head_dim]``."""
        width = flat[0].numel() if flat.shape[0] else 0
        if width % self.head_dim:
            raise CaptureError(f"{kind} holds {width} values per token, not whole heads of the config's head_dim "
                               f"{self.head_dim}: the engine's heads are of another width")
        self.record_layer(kind, flat.reshape(flat.shape[0], -1, self.head_dim))

    def record_routing(self, weights: torch.Tensor, experts: torch.Tensor, num_experts: int) -> None:
        """Record a router's choice, ``[tokens, top_k]`` weights of the ``[tokens, top_k]`` experts chosen, as
        ``expert_weights``: ``[tokens, num_experts]``, each expert's weight, zero where it was not chosen.
        Dense, so that the order in which an engine lists the chosen experts (unsorted top-k) does not matter."""
        dense = torch.zeros(weights.shape[0], num_experts, dtype=weights.dtype, device=weights.device)
        self.record_layer("expert_weights", dense.scatter(1, experts.long(), weights))

    def record_logits(self, logits: torch.Tensor) -> None:
        """Record logits computed for the last token of each sampling segment, in batch order.

        Engines compute them either for the sampled sequences only or for every sequence in the
        forward (vLLM, whose partial prefill chunks get logits that are then discarded)."""
        sampling = [s for s in self.segments if s.samples]
        if logits.shape[0] == len(self.segments):
            sampling = [s if s.samples else None for s in self.segments]
        elif logits.shape[0] != len(sampling):
            raise CaptureError(f"logits has {logits.shape[0]} rows for {len(sampling)} sampled sequences "
                               f"of {len(self.segments)}")
        for row, s in enumerate(sampling):
            if s is not None:
                self._chunks[schema.key(s.step, s.prompt, "logits")].append(as_stored(logits[row : row + 1]))

    def tensors(self) -> dict[str, torch.Tensor]:
        # A Recorder that only adopted its ranks' tensors routed no forward: each rank's Recorder checked its own.
        if self.joining and self.router.forwards and not self.router.mixed:
            raise CaptureError("no forward held a prompt's prefill with another prompt's decode step: "
                               "the prompts did not join a running batch")
        return {k: torch.cat(v) for k, v in self._chunks.items()}

    def adopt(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Take canonical tensors recorded elsewhere (by the Recorders of tensor-parallel ranks)."""
        for key, tensor in tensors.items():
            self._chunks[key] = [tensor]


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

        self.replace(module, "forward", forward)

    def on_remove(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` at :meth:`remove` (e.g. to remove hooks living in other processes)."""
        self._handles.append(_Call(fn))

    def replace(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name = value`` until :meth:`remove` (e.g. a module-level function)."""
        self._handles.append(_Restore(owner, name))
        setattr(owner, name, value)

    def remove(self) -> None:
        for h in reversed(self._handles):
            h.remove()
        self._handles.clear()


class _Call:
    def __init__(self, fn: Callable[[], None]):
        self.remove = fn


class _Restore:
    def __init__(self, owner: Any, name: str):
        self.owner, self.name = owner, name
        self.had_own = name in vars(owner)
        self.old = vars(owner).get(name)

    def remove(self) -> None:
        if self.had_own:
            setattr(self.owner, self.name, self.old)
        else:  # the attribute came from the class: drop the instance's shadow
            delattr(self.owner, self.name)


class NullRecorder:
    """Stands in for a Recorder when capture is off (the bare engine, timed by benchmarks):
    an engine's generate loop may report forwards and logits, and nothing is kept."""

    def begin_forward(self, positions: torch.Tensor, input_ids: torch.Tensor) -> None:
        pass

    def record_logits(self, logits: torch.Tensor) -> None:
        pass


class Parts:
    """The modules of a causal LM that capture hooks, found by the family's module names
    (see ``parity.registry.ModuleNames``; the run request carries them)."""

    def __init__(self, model: torch.nn.Module, names: Mapping[str, str] | None):
        from parity.registry import ModuleNames

        self.model = model
        names = dict(names or {})
        if "mlp" in names:  # a list once it has crossed the pipe
            names["mlp"] = tuple(names["mlp"])
        self.names = ModuleNames(**names)
        decoder, layers, final_norm = (discover(model) if self.names.coarse
                                       else (self.names.decoder, self.names.layers, self.names.final_norm))
        self.decoder = resolve(model, decoder)
        self.layers: Sequence[torch.nn.Module] = resolve(self.decoder, layers)
        self.final_norm: torch.nn.Module = resolve(self.decoder, final_norm)

    def attention(self, layer: torch.nn.Module) -> torch.nn.Module:
        return resolve(layer, self.names.attention)

    def mlp(self, layer: torch.nn.Module) -> torch.nn.Module:
        for name in self.names.mlp:
            if hasattr(layer, name):
                return resolve(layer, name)
        raise CaptureError(f"{type(layer).__name__} has no MLP block named {' or '.join(self.names.mlp)}")

    def router(self, layer: torch.nn.Module) -> torch.nn.Module | None:
        """The layer's router linear; None in a dense family or a dense layer of a sparse model."""
        if self.names.router is None or self.names.coarse:
            return None
        return getattr(self.mlp(layer), self.names.router, None)

    def sparse_blocks(self) -> list[tuple[int, torch.nn.Module]]:
        """``(layer index, MLP block)`` of every layer that routes tokens to experts."""
        return [(i, self.mlp(layer)) for i, layer in enumerate(self.layers) if self.router(layer) is not None]


FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "final_norm")
"""What causal LMs call the norm after their last layer, in transformers and in the engines' ports alike."""


def discover(model: torch.nn.Module) -> tuple[str, str, str]:
    """``(decoder, layers, final norm)`` paths of a causal LM whose names nobody wrote down (the generic tier):
    the layers are the outermost list of as many modules as the config has layers (experts' lists sit deeper;
    a hybrid model's layers are of several classes), the decoder holds them, and the final norm is the
    decoder's child named as in :data:`FINAL_NORMS`."""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(name.count("."), name) for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    if not lists:
        raise CaptureError(f"{type(model).__name__} has no list of its {layers} decoder layers")
    decoder, _, layers = min(lists)[1].rpartition(".")
    children = dict(resolve(model, decoder).named_children()) if decoder else dict(model.named_children())
    norms = [n for n in FINAL_NORMS if n in children]
    if not decoder or not norms:
        raise CaptureError(f"{type(model).__name__}: no final norm ({' or '.join(FINAL_NORMS)}) beside its layers "
                           f"{min(lists)[1]!r}")
    return decoder, layers, norms[0]


def hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer is called with: its first floating-point argument (engines' layers take
    integer positions first, transformers' the hidden states), or its ``hidden_states`` keyword."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_floating_point():
            return arg
    return kwargs["hidden_states"]


def _coarse_residuals(hooks: Hooks, rec: Recorder, parts: Parts, layer_input: Callable[[tuple, dict], torch.Tensor],
                      residual: Callable[[torch.nn.Module, Any, tuple], torch.Tensor],
                      tokens: Callable[[torch.Tensor], torch.Tensor]
                      ) -> Callable[[int, torch.nn.Module, Any, tuple], None]:
    """Records ``layers.{i}.residual`` for a family whose convention nobody wrote down (the generic tier). A layer
    returning a pair returns the stream first (``ModuleNames.stream_first``) where its second element is the very
    hidden state it was given (Cohere's parallel blocks), or where the final norm is then handed one tensor, the
    stream, with no residual left to add (vLLM's Exaone-4: post-norm layers that take the residual argument yet
    return (stream, mid-layer stream)); any other pair is the fused add+norm convention, whose second element is
    the stream before the layer's last add. So each layer's readings wait for the final norm's call. Inputs and
    outputs are copied as the layers run: fused norms update the residual they are handed in place."""
    given: dict[int, torch.Tensor] = {}
    waiting: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # layer, as fused, as stream first
    for layer in parts.layers:
        hooks.pre(layer, lambda m, a, kw: given.__setitem__(id(m), layer_input(a, kw).clone()), with_kwargs=True)
    hooks.pre(parts.layers[0], lambda m, a: waiting.clear())  # what a forward that never reached the norm left

    def take(index: int, layer: torch.nn.Module, out: Any, args: tuple) -> None:
        taken = given.pop(id(layer))
        pair = isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], torch.Tensor)
        if pair and out[1].shape == taken.shape and torch.equal(out[1], taken):
            waiting.append((index, out[0].clone(), None))
        else:
            waiting.append((index, residual(layer, out, args).clone(), out[0].clone() if pair else None))

    def flush(norm: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        alone = sum(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())) == 1
        for index, fused, stream_first in waiting:
            rec.enter_layer(index)
            rec.record_layer("residual", tokens(stream_first if alone and stream_first is not None else fused))
        waiting.clear()

    hooks.pre(parts.final_norm, flush, with_kwargs=True)
    return take


def hook_common(rec: Recorder, parts: Parts, *, layer_input: Callable[[tuple, dict], torch.Tensor],
                residual: Callable[[torch.nn.Module, Any, tuple], torch.Tensor],
                tokens: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Hooks:
    """Hooks every engine shares: embedding, layer boundaries, attention, router, MLP and final norm outputs.

    ``embed`` is the hidden state entering the first decoder layer, taken by
    ``layer_input(args, kwargs)`` of that layer's call: the token embedding with any
    scale a family applies outside the embedding module (Gemma's sqrt(hidden), which
    transformers folds into its embedding module and engines apply in place after it).
    ``residual`` maps a decoder layer, its raw output and arguments (positional, then keyword) to the
    full residual stream: this is where each engine's layer-output convention is
    normalised (SGLang's needs the layer's ``forward_batch`` argument), unless the family's ports return the
    stream first whatever their signature says (``ModuleNames.stream_first``).
    ``tokens`` maps a module output to ``[tokens, ...]`` (e.g. drops a batch axis); routers take
    flattened tokens in every implementation and need no mapping.
    """
    hooks = Hooks()
    layers = parts.layers
    if parts.names.stream_first:
        residual = lambda layer, out, args: first(out)  # noqa: E731
    if parts.names.coarse:
        take = _coarse_residuals(hooks, rec, parts, layer_input, residual, tokens)
    else:
        take = lambda i, layer, out, args: rec.record_layer("residual", tokens(residual(layer, out, args)))  # noqa: E731
    hooks.pre(layers[0], lambda m, a, kw: rec.record("embed", tokens(layer_input(a, kw))), with_kwargs=True)
    hooks.post(parts.final_norm, lambda m, a, out: rec.record("final_norm", tokens(first(out))))
    for i, layer in enumerate(layers):
        hooks.pre(layer, lambda m, a, i=i: rec.enter_layer(i))
        # The layer's arguments, keyword ones after the positional: SGLang's OPT and Phi pass forward_batch by name.
        hooks.post(layer, lambda m, a, kw, out, i=i: take(i, m, out, (*a, *kw.values())), with_kwargs=True)
        if parts.names.coarse:
            continue
        hooks.post(parts.attention(layer), lambda m, a, out: rec.record_layer("attn_out", tokens(first(out))))
        hooks.post(parts.mlp(layer), lambda m, a, out: rec.record_layer("mlp_out", tokens(first(out))))
        router = parts.router(layer)
        if router is not None:  # every port's router returns the logits first, for flattened tokens
            hooks.post(router, lambda m, a, out: rec.record_layer("router_logits", first(out)))
    return hooks

def config_head_dim(checkpoint: str) -> int:
    """head_dim of a checkpoint (see :func:`head_dim`)."""
    import json
    from pathlib import Path

    return head_dim(json.loads((Path(checkpoint) / "config.json").read_text()))


def head_dim(config: Mapping[str, Any]) -> int:
    """head_dim as transformers derives it: explicit ``head_dim`` or hidden_size / num_attention_heads; 0 for a
    config under other names (the generic tier's GPT-2's ``n_embd``), whose heads are never captured."""
    if config.get("head_dim"):
        return config["head_dim"]
    return config["hidden_size"] // config["num_attention_heads"] if "hidden_size" in config else 0


def save(tensors: dict[str, torch.Tensor], out: str) -> list[str]:
    """Write captured tensors atomically; return the non-finite ones (reported, not hidden)."""
    import os

    from safetensors.torch import save_file

    non_finite = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    tmp = f"{out}.tmp"
    save_file({k: t.contiguous() for k, t in tensors.items()}, tmp)
    os.replace(tmp, out)
    return non_finite


def forward_inputs(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, input_ids)`` of an engine decoder's ``forward(input_ids, positions, ...)`` call, or of a
    transformers model's ``forward(input_ids=..., position_ids=...)`` that an engine runs (vLLM's Transformers
    backend)."""
    names = ("input_ids", "positions")
    values = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
    if "positions" not in values and "position_ids" in kwargs:
        values["positions"] = kwargs["position_ids"]
    return values["positions"], values["input_ids"]


def batch_first(t: torch.Tensor) -> torch.Tensor:
    """``[tokens, ...]`` of an engine's hidden states, whose own layers keep ``[tokens, hidden]``, but whose
    Transformers backend (vLLM's) runs a transformers model on a batch of one, ``[1, tokens, hidden]``."""
    return t[0] if t.dim() == 3 and t.shape[0] == 1 else t


def hook_qk(hooks: Hooks, rec: Recorder, parts: Parts) -> None:
    """q/k as attention takes them in, flattened to ``[tokens, heads * head_dim]`` by engines: from the rotary
    module's output, or, in a family whose layers do not all call it, from the attention kernel's input
    (``ModuleNames.qk_input``); nothing in the generic tier (``ModuleNames.coarse``)."""
    if parts.names.coarse:
        return
    if parts.names.qk_input is None:
        _hook_rotaries(hooks, rec, parts)
        return

    def taken(module: torch.nn.Module, args: Any) -> None:
        rec.record_heads("q_rot", args[0])
        rec.record_heads("k_rot", args[1])

    for layer in parts.layers:
        hooks.pre(resolve(parts.attention(layer), parts.names.qk_input), taken)


def _hook_rotaries(hooks: Hooks, rec: Recorder, parts: Parts) -> None:
    """q/k after RoPE from engine rotary modules returning ``(q, k)`` flattened to ``[tokens, heads * head_dim]``.

    ``get_rope`` caches one rotary object for all layers with the same settings: a
    shared object is hooked once (the Recorder knows the current layer), not once per layer.
    """
    def rotated(module: torch.nn.Module, args: Any, output: Any) -> None:
        q, k = output
        rec.record_heads("q_rot", q)
        rec.record_heads("k_rot", k)

    rotaries = {id(r): r for r in (parts.attention(layer).rotary_emb for layer in parts.layers)}
    for rotary in rotaries.values():
        hooks.post(rotary, rotated)
