"""Hypothesis strategies for parity examples, composed from small pieces.

Draws are dependent and ordered (kv heads, then the GQA group, then head_dim,
then hidden size), so every example is valid by construction rather than
filtered. Each piece draws its first option when shrinking, so a failure
shrinks to the plainest model that still shows it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers as _providers

from parity import registry
from parity.example import Example
from parity.registry import ArchSpec, family_config
from parity.worker.contract import EXECUTION_MODES, Execution


def supported_head_dims(spec: ArchSpec, backend_head_sizes: Iterable[Sequence[int] | None]) -> tuple[int, ...]:
    """The entry's head sizes that every backend accepts (``None`` from a backend means any)."""
    dims = list(spec.head_dims)
    for sizes in backend_head_sizes:
        if sizes is not None:
            dims = [d for d in dims if d in set(sizes)]
    return tuple(dims)


@st.composite
def attention_shapes(draw: st.DrawFn, spec: ArchSpec, head_dims: Sequence[int]) -> dict[str, int]:
    if not head_dims:
        raise ValueError(f"{spec.model_type}: no head size is supported by every selected backend")
    kv = draw(st.sampled_from(spec.kv_heads))
    heads = kv * draw(st.sampled_from(spec.gqa_groups))
    head_dim = draw(st.sampled_from(head_dims))
    hidden = heads * head_dim
    if spec.explicit_head_dim:
        # head_dim decoupled from hidden_size / heads, as in GLM-4 and Gemma.
        hidden = draw(st.sampled_from([hidden] + [h for h in (64, 128, 256) if h != hidden]))
    return {"num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim, "hidden_size": hidden}


MAX_POSITIONS = (256, 128)
"""max_position_embeddings: RoPE scaling reads it (LongRoPE's attention scaling and factor ratio).
Never below 128: vLLM serves parity's prompts with max_model_len 64 and refuses a model whose context,
max_position_embeddings times a linear factor as small as 0.5, is shorter."""

OMIT = "<omitted>"
"""A parameter value meaning "leave the key out", so the type's own default applies."""

# Every RoPE scaling type transformers implements, with every parameter it reads, each
# listed plainest first. Values are chosen to act at the drawn positions: original contexts
# of 8 are outgrown by most prompts and by decoding (llama3 and yarn rescale there; LongRoPE
# switches factors); YaRN's beta_fast moves a correction bound only
# when the original context exceeds beta_fast * 2 pi, hence 4 next to 32 with a context of 64.
ROPE_SCALING: dict[str, dict[str, tuple[Any, ...]]] = {
    "default": {},
    "linear": {"factor": (2.0, 4.0, 0.5)},
    # transformers rescales only past max_position_embeddings, which no served sequence reaches.
    "dynamic": {"factor": (2.0, 4.0)},
    "llama3": {"factor": (8.0, 2.0), "low_freq_factor": (1.0, 2.0), "high_freq_factor": (4.0, 8.0),
               "original_max_position_embeddings": (64, 16, 8)},
    "yarn": {"factor": (4.0, 2.0), "original_max_position_embeddings": (64, 16, 8),
             "beta_fast": (32.0, 4.0), "beta_slow": (1.0, 2.0), "attention_factor": (OMIT, 0.8, 1.25),
             "mscale": (OMIT, 1.0, 0.5), "mscale_all_dim": (OMIT, 1.0, 0.5), "truncate": (OMIT, False)},
    # Plus per-frequency short/long factors (see longrope_factors).
    "longrope": {"original_max_position_embeddings": (64, 128, 8), "attention_factor": (OMIT, 1.0, 0.5),
                 "factor": (OMIT, 2.0)},
}


def rope_candidates(spec: ArchSpec, rope_type: str) -> dict[str, tuple[Any, ...]]:
    """The parameters drawn for ``rope_type`` in the entry's family, each with its candidates (plainest first):
    ``ROPE_SCALING``'s, with the family's own (``ArchSpec.rope_values``) in their place."""
    candidates = {**ROPE_SCALING[rope_type], **spec.rope_values.get(rope_type, {})}
    return {k: values for k, values in candidates.items() if values}


@st.composite
def rope_scaling(draw: st.DrawFn, spec: ArchSpec) -> dict[str, Any]:
    """A ``rope_type`` from the entry's variants and that variant's parameters."""
    rope_type = draw(st.sampled_from(spec.rope_types))
    params = {k: draw(st.sampled_from(values)) for k, values in rope_candidates(spec, rope_type).items()}
    return {"rope_type": rope_type, **{k: v for k, v in params.items() if v != OMIT}}


@st.composite
def rope_parameters(draw: st.DrawFn, spec: ArchSpec, head_dim: int) -> dict[str, Any]:
    params: dict[str, Any] = {**draw(rope_scaling(spec)), "rope_theta": draw(st.sampled_from(spec.rope_thetas))}
    # The rotated width must be a whole number of (even) pairs.
    factors = [f for f in spec.partial_rotary_factors if (f * head_dim) % 2 == 0 and f * head_dim >= 2]
    factor = draw(st.sampled_from(factors))
    if len(spec.partial_rotary_factors) > 1 or factor != 1.0:
        params["partial_rotary_factor"] = factor
    if params["rope_type"] == "longrope":
        params.update(draw(longrope_factors(int(factor * head_dim) // 2)))
    return params


@st.composite
def layered_rope_parameters(draw: st.DrawFn, spec: ArchSpec, head_dim: int) -> dict[str, Any]:
    """The family's rope_parameters: one set, or one per layer type drawn each on its own
    (``ArchSpec.rope_layer_types``)."""
    if not spec.rope_layer_types:
        return draw(rope_parameters(spec, head_dim))
    return {layer_type: draw(rope_parameters(spec, head_dim)) for layer_type in spec.rope_layer_types}


LONGROPE_TOPS = {"short_factor": (1.0, 1.5), "long_factor": (4.0, 16.0)}
"""LongRoPE factor ramps, by the value on the slowest pair; the first of each is the plainest."""


def longrope_ramps(pairs: int, **tops: float) -> dict[str, list[float]]:
    """LongRoPE's per-frequency rescale factors, one per rotated pair, rising linearly from 1 on the
    fastest pair to the given top on the slowest (the shape of released Phi-3 configs)."""
    return {key: [1.0 + (top - 1.0) * i / max(pairs - 1, 1) for i in range(pairs)] for key, top in tops.items()}


@st.composite
def longrope_factors(draw: st.DrawFn, pairs: int) -> dict[str, list[float]]:
    return longrope_ramps(pairs, **{key: draw(st.sampled_from(tops)) for key, tops in LONGROPE_TOPS.items()})


@st.composite
def model_configs(draw: st.DrawFn, spec: ArchSpec, head_dims: Sequence[int]) -> dict[str, Any]:
    shapes = draw(attention_shapes(spec, head_dims))
    config: dict[str, Any] = {
        "model_type": spec.model_type,
        "architectures": [spec.architecture],
        **shapes,
        "num_hidden_layers": draw(st.integers(*spec.layers)),
        "intermediate_size": draw(st.sampled_from(spec.intermediate_sizes)),
        "rms_norm_eps": draw(st.sampled_from(spec.rms_norm_eps)),
        "vocab_size": draw(st.sampled_from(spec.vocab_sizes)),
        "tie_word_embeddings": draw(st.sampled_from(spec.tie_word_embeddings)),
        "max_position_embeddings": draw(st.sampled_from(MAX_POSITIONS)),
        "rope_parameters": draw(layered_rope_parameters(spec, shapes["head_dim"])),
        **draw(optional_knobs(spec)),
        **spec.fixed,
    }
    if not spec.states_head_dim:
        del config["head_dim"]
    rope = config["rope_parameters"]
    if rope.get("rope_type") == "longrope" and spec.top_level_original_context:
        # LongRoPE checkpoints (Phi-3) state the original context at top level too, and
        # transformers' Phi3Config replaces rope_parameters' value with its top-level default
        # (4096) when it is missing there.
        config["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    return family_config(spec, config)


@st.composite
def generic_configs(draw: st.DrawFn, spec: ArchSpec, head_dims: Sequence[int]) -> dict[str, Any]:
    """A generic-tier config (``ArchSpec.sizes``): the sizes its config class has, drawn small, the derived
    fixed values, and its measured knobs (``registry.generic_knobs``): each written at its class default,
    and up to ``GENERIC_KNOBS_OFF`` of them moved to a value measured to act; every other key is left to the
    config class's default."""
    drawn = {**draw(attention_shapes(spec, head_dims)), "num_hidden_layers": draw(st.integers(*spec.layers)),
             "intermediate_size": draw(st.sampled_from(spec.intermediate_sizes)),
             "vocab_size": draw(st.sampled_from(spec.vocab_sizes))}
    config = {"model_type": spec.model_type, "architectures": [spec.architecture],
              **{k: v for k, v in drawn.items() if k in spec.sizes},
              **{k: values[0] for k, values in spec.knobs.items()}, **spec.fixed}
    config.update(draw(knobs_off_default(spec.knobs)))
    return family_config(spec, config)


GENERIC_KNOBS_OFF = 2
"""Knobs a generic-tier config moves off their defaults at most: a generic family has dozens, and a failure
that needs one shrinks to it faster from two than from all of them at once."""


@st.composite
def knobs_off_default(draw: st.DrawFn, knobs: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """A few of ``knobs`` (each: its default, then other values) at another value than their default;
    shrinks towards none."""
    if not knobs:
        return {}
    # Not unique=True: Hypothesis shrinks a plain list by deleting elements, which a unique one resists (a failure
    # that needs one knob ended on two); a knob drawn twice is moved once.
    chosen = draw(st.lists(st.sampled_from(sorted(knobs)), max_size=GENERIC_KNOBS_OFF))
    return {k: draw(st.sampled_from(knobs[k][1:])) for k in dict.fromkeys(chosen)}


@st.composite
def optional_knobs(draw: st.DrawFn, spec: ArchSpec) -> dict[str, Any]:
    """Knobs only some families have: drawn only where the entry offers values."""
    knobs: dict[str, Any] = {}
    if spec.attention_bias:
        knobs["attention_bias"] = draw(st.sampled_from(spec.attention_bias))
    if spec.sliding_windows:
        knobs["sliding_window"] = draw(st.sampled_from(spec.sliding_windows))
    for key, values in spec.knobs.items():
        knobs[key] = draw(st.sampled_from(values))
    for combos in spec.knob_sets:
        knobs.update(draw(st.sampled_from(combos)))
    activation = draw(plain_half(spec.activations))
    knobs.update((key, activation) for key in spec.activation_keys)
    return knobs


def plain_half(values: Sequence[Any]) -> st.SearchStrategy[Any]:
    """The first (plainest) value half the time, another the rest; shrinks to the first."""
    return st.one_of(st.just(values[0]), st.sampled_from(values[1:])) if len(values) > 1 else st.just(values[0])


@st.composite
def prompt_batches(draw: st.DrawFn, vocab_size: int, max_prompts: int = 3, max_len: int = 12,
                   shared_prefix: int = 0) -> tuple[tuple[int, ...], ...]:
    """Prompts of distinct lengths whose first tokens after ``shared_prefix`` common ones are distinct.

    Distinct lengths let an engine's flattened decode batch be attributed to
    prompts by position alone (see parity.worker.routing.TokenRouter). A shared
    prefix asks for two prompts at least, so one can hit the cache of the other.
    """
    lengths = draw(st.lists(st.integers(2, max_len), min_size=2 if shared_prefix else 1, max_size=max_prompts,
                            unique=True))
    firsts = draw(st.lists(st.integers(0, vocab_size - 1), min_size=len(lengths), max_size=len(lengths), unique=True))
    token = st.integers(0, vocab_size - 1)
    prefix = tuple(draw(st.lists(token, min_size=shared_prefix, max_size=shared_prefix)))
    return tuple(
        (*prefix, first, *draw(st.lists(token, min_size=n - 1, max_size=n - 1))) for first, n in zip(firsts, lengths)
    )


SHARED_PREFIX = 32
"""Tokens the prompts share when the prefix cache is drawn: engines reuse only whole KV blocks, and
vLLM's CPU attention takes block sizes in multiples of 32 (its adapter asks for 32)."""

MAX_SEQUENCE = 64
"""Most positions one prompt's sequence may need, shared prefix, decode steps and the token the last one
produces included: vLLM serves it with a max_model_len of 64, which every drawn context covers (see
:data:`MAX_POSITIONS`)."""


@dataclass(frozen=True)
class PromptSurface:
    """How many prompts an example serves, and how long they may be."""

    count: int = 3
    """Most prompts in one example (ragged: each of its own length)."""

    tokens: int = 12
    """Longest prompt, a shared prefix aside; cut where prefix, prompt and decode steps would pass
    :data:`MAX_SEQUENCE`."""

    def longest(self, shared_prefix: int, decode_steps: int, kv_block: int | None = None) -> int:
        """Under KV blocks of ``kv_block`` tokens, prompts twice as long as a block at least: a block size
        acts only on a sequence that outgrows one block."""
        return min(max(self.tokens, 2 * (kv_block or 0)), MAX_SEQUENCE - shared_prefix - decode_steps - 1)


PREFILL_CHUNKS = (4, 8)
"""Tokens per forward under chunked prefill: prompts of up to 12 tokens (44 with a shared prefix) take
2 to 11 forwards."""

KV_BLOCKS = (32,)
"""Tokens per KV block, where drawn: vLLM's CPU attention takes multiples of 32 only (it refuses 16: "No common
block size for 16"), and its default block of 128 holds any sequence parity serves whole; SGLang pages by any
size (1 token by default)."""


@dataclass(frozen=True)
class ExecutionSurface:
    """Which execution modes a profile draws, and how often."""

    modes: tuple[str, ...] = EXECUTION_MODES
    """The modes drawn at all; the others stay plain."""

    tensor_parallel: tuple[int, ...] = (1, 2)
    """Tensor-parallel sizes, plainest first; only those the config splits over are drawn."""

    plain_share: int = 8
    """Chunked prefill, the prefix cache, KV blocks and joining a running batch are off this many times for every
    time they are on, per value (chunked prefill in 1 example of 5, the others in 1 of 9): most examples run the plainest way,
    which every backend supports (SGLang's adapter runs none of the modes), and a failure shrinks to it."""

    one_rank_share: int = 24
    """One rank this many times for every time more are drawn (where the config splits): each
    multi-rank example starts an engine of its own, about 30 s on 2 CPU cores."""

    def mostly_plain(self, plain: Any, others: Sequence[Any], share: int | None = None) -> st.SearchStrategy[Any]:
        """``plain`` ``share`` (``plain_share``) times as often as each of ``others``; shrinks to ``plain``."""
        return st.sampled_from([plain] * (share or self.plain_share) + list(others))


def tensor_parallel_fits(config: dict[str, Any], ranks: int) -> bool:
    """Whether the (canonical) config splits over ``ranks``: whole query heads and MLP columns per rank, and
    kv heads split evenly or replicated evenly (engines' rule for GQA under TP)."""
    kv = registry.kv_heads(config)
    return (config["num_attention_heads"] % ranks == 0 and (config.get("intermediate_size") or 0) % ranks == 0
            and (kv % ranks == 0 or ranks % kv == 0))


@st.composite
def executions(draw: st.DrawFn, config: dict[str, Any], surface: ExecutionSurface = ExecutionSurface()) -> Execution:
    """How the engines run the example: tensor-parallel ranks valid for ``config``, chunked prefill, the prefix
    cache and KV blocks, as ``surface`` says."""
    def drawn(mode: str, plain: Any, others: Sequence[Any], share: int | None = None) -> Any:
        return draw(surface.mostly_plain(plain, others, share)) if mode in surface.modes else plain

    ranks = [r for r in surface.tensor_parallel if tensor_parallel_fits(config, r)]
    return Execution(tensor_parallel=drawn("tensor_parallel", ranks[0], ranks[1:], surface.one_rank_share),
                     prefill_chunk=drawn("chunked_prefill", None, PREFILL_CHUNKS),
                     prefix_cache=drawn("prefix_cache", False, [True]),
                     kv_block=drawn("kv_block", None, KV_BLOCKS))


@st.composite
def examples(draw: st.DrawFn, arch: str, spec: ArchSpec, head_dims: Sequence[int], decode_steps: int,
             execution: ExecutionSurface = ExecutionSurface(), prompts: PromptSurface = PromptSurface()) -> Example:
    config = draw((generic_configs if spec.tier == "generic" else model_configs)(spec, head_dims))
    weight_seed = draw(st.integers(0, 2**31 - 1))
    canonical = registry.canonical_config(arch, config)
    surface = execution
    execution = draw(executions(canonical, surface))
    prefix = SHARED_PREFIX if execution.prefix_cache else 0
    batch = draw(prompt_batches(canonical["vocab_size"], prompts.count, prompts.longest(prefix, decode_steps, execution.kv_block),
                                shared_prefix=prefix))
    # Drawn last, and only where it can act (two prompts at least, and decode steps for a later one to join), so
    # the draws before it stay as they were.
    if "join_running" in surface.modes and len(batch) > 1 and decode_steps and draw(surface.mostly_plain(False, [True])):
        execution = replace(execution, join_running=True)
        batch = tuple(sorted(batch, key=len, reverse=True))
    return Example(arch=arch, config=config, weight_seed=weight_seed, prompts=batch, decode_steps=decode_steps,
                   execution=execution)


@contextlib.contextmanager
def seed_only() -> Iterator[None]:
    """Draws that depend on the seed alone. Hypothesis mixes literals from every local module the
    process has imported into its draws (``providers._get_local_constants``), so one seed drew other
    examples under pytest than under ``parity run``, and in a clone at another path: a search,
    a sample and a replay must draw the same examples wherever they run."""
    local = getattr(_providers, "_get_local_constants", None)
    if local is None:  # a Hypothesis without the pool: nothing to pin (tests/test_strategies.py checks)
        yield
        return
    _providers._get_local_constants = _providers.Constants
    _providers.CONSTANTS_CACHE.cache.clear()  # permitted constants, cached with the pool they came from
    try:
        yield
    finally:
        _providers._get_local_constants = local
        _providers.CONSTANTS_CACHE.cache.clear()


def sample(arch: str, count: int, seed: int, decode_steps: int = 2, spec: ArchSpec | None = None,
           execution: ExecutionSurface = ExecutionSurface()) -> list[Example]:
    """The first ``count`` examples the strategies generate for ``arch`` (as ``spec``, by default its entry)
    under ``seed``, outside any search (the first is the plainest: Hypothesis starts from every piece's first
    choice)."""
    spec = spec or registry.get(arch)
    drawn: list[Example] = []

    # Every setting that shapes the draws is stated, so a loaded profile (derandomize in CI) cannot change them.
    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=(Phase.generate,), derandomize=False)
    @given(examples(arch, spec, spec.head_dims, decode_steps, execution))
    def collect(example: Example) -> None:
        drawn.append(example)

    with seed_only():
        collect()
    return drawn[:count]
