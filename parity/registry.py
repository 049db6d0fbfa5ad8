"""The architecture registry: one frozen entry per model family.

Each entry names the transformers config (``model_type``) and the architecture
class engines register it under, the knobs the strategies vary with their
ranges, and the config values held fixed. Ranges are ordered small-first on
purpose: Hypothesis shrinks towards the first choice, so a failure shrinks to
the plainest model that still shows it (1 layer, full rotary, no GQA).

Adding an architecture is one entry in ``ARCHITECTURES``; everything else
(strategies, support matrix, tests over "every architecture") derives from it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping


class UnknownArchitecture(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModuleNames:
    """Where a family keeps the modules parity hooks, as its checkpoint names them.

    Engines mirror the checkpoint's names to load its weights, so one set of names
    serves transformers and every engine port of the family.
    """

    decoder: str = "model"
    """The decoder stack under the causal-LM head (GPT-J: ``transformer``)."""
    layers: str = "layers"
    """The list of decoder layers, under ``decoder`` (GPT-J: ``h``)."""
    final_norm: str = "norm"
    """The norm after the last layer, under ``decoder`` (GPT-J: ``ln_f``)."""
    attention: str = "self_attn"
    """The attention block of a layer (GPT-J: ``attn``)."""
    mlp: tuple[str, ...] = ("mlp",)
    """The MLP block of a layer, under the first of these names the layer has (Mixtral's checkpoints and
    engine ports call it ``block_sparse_moe``, transformers 5 ``mlp``)."""
    qk_input: str | None = None
    """The attention kernel under ``attention``, called with q and k first, flattened as the engine feeds them
    in; None: engines' q/k are read from the rotary module's output. Named where layers do not all call
    the rotary (Cohere2's full-attention layers have no RoPE), so that q/k are read in every layer.
    transformers' q/k are read where attention takes them in either way."""
    stream_first: bool = False
    """Whether engine ports' decoder layers return the full residual stream first although they take a
    ``residual`` argument (the fused add+norm convention, whose stream is the sum of the pair): Cohere's ports
    ignore the argument, add attention and MLP to the layer's input themselves and return that input second."""
    router: str | None = None
    """The router linear of a mixture-of-experts block, under ``mlp``; None for a dense family. A layer
    whose block has no such module (a dense layer of a sparse model) records no routing."""
    coarse: bool = False
    """The generic tier: nothing is known about the family's modules but that it is a causal LM, so only its
    embedding, each layer's residual stream, the final norm and the logits are compared; the decoder, its
    layers and final norm are found on each live model (``parity.worker.capture.Parts``), and the other
    names are unused."""
    latent_attention: bool = False
    """Multi-head latent attention (DeepSeek's MLA): q/k are compared on their rotary part only, q_rot each
    head's last ``head_dim`` (= ``qk_rope_head_dim``) dimensions and k_rot the one rotary key every head shares.
    Engines attend over the compressed latent in decode and never form a whole key per head, so the rotary
    parts, as their rotary modules return them, are what all three implementations have; the heads'
    non-rotary parts reach the comparison through attn_out."""


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    """transformers ``model_type``; the checkpoint's config is ``AutoConfig.for_model(model_type, ...)``."""

    architecture: str
    """Class name engines register the family under (``config.architectures[0]``)."""

    head_dims: tuple[int, ...] = (32, 64, 128)
    """Candidate head sizes, intersected with what every selected backend supports."""

    kv_heads: tuple[int, ...] = (1, 2)
    """Candidate numbers of key/value heads."""

    gqa_groups: tuple[int, ...] = (1, 2, 4)
    """Query heads per key/value head; 1 (plain multi-head attention) first."""

    explicit_head_dim: bool = True
    """Whether ``head_dim`` may differ from ``hidden_size // num_attention_heads``."""

    states_head_dim: bool = True
    """Whether the checkpoint's config states head_dim. False where the config class has no such key
    and a stated one would reach only part of the model (StableLM's RoPE reads it, its attention
    does not), so that a config changed in hidden_size alone stays one model."""

    layers: tuple[int, int] = (1, 4)
    """Inclusive range of ``num_hidden_layers``."""

    intermediate_sizes: tuple[int, ...] = (64, 128, 96, 256, 352)
    """Candidate MLP widths (per branch, transformers' convention)."""

    partial_rotary_factors: tuple[float, ...] = (1.0,)
    """Fractions of head_dim that RoPE rotates; 1.0 first."""

    rope_thetas: tuple[float, ...] = (10000.0, 1000000.0, 500.0)
    rms_norm_eps: tuple[float, ...] = (1e-6, 1e-5, 1e-12, 1e-3)
    vocab_sizes: tuple[int, ...] = (256, 1000)
    tie_word_embeddings: tuple[bool, ...] = (False, True)

    attention_bias: tuple[bool, ...] = ()
    """Values of the config's ``attention_bias`` (q/k/v/o bias); empty: the family has no such knob
    (Qwen2's q/k/v bias is unconditional, Gemma ports ignore the key)."""

    sliding_windows: tuple[int | None, ...] = ()
    """Values of ``sliding_window``; empty: the family has no window. ``None`` (no window) first,
    then windows shorter than the prompts, so the window actually drops keys."""

    knobs: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """Further family-specific config values to draw, each from its own candidates
    (plainest first), e.g. Gemma2's soft-capping."""

    knob_sets: tuple[tuple[Mapping[str, Any], ...], ...] = ()
    """Config values valid only together: each set is drawn as one of its combinations (plainest first),
    e.g. GLM-4-MoE's expert groups, which must divide the experts and leave enough of them for the top-k."""

    rope_types: tuple[str, ...] = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
    """RoPE scaling variants (``rope_parameters["rope_type"]``) drawn, "default" first: every type
    the family's transformers config accepts (parameters in strategies.ROPE_SCALING)."""

    activations: tuple[str, ...] = ("silu", "gelu_pytorch_tanh", "gelu", "relu")
    """MLP activations drawn, the family's own first (drawn half the time: most engine ports
    accept only their family's activation and refuse the others when loading)."""

    activation_keys: tuple[str, ...] = ("hidden_act",)
    """Config keys that name the activation, each written with the drawn one (Gemma's
    checkpoints carry two names, read by different implementations)."""

    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Config values held constant (e.g. token ids that must fit a tiny vocabulary)."""

    config_keys: Mapping[str, str] = field(default_factory=dict)
    """The family's own names for the config keys the strategies draw, where they differ
    (StableLM's ``layer_norm_eps`` for ``rms_norm_eps``). Written under the family's name,
    so the report's config is the checkpoint's config.json."""

    rotary_dim_key: str | None = None
    """Config key stating the rotated width in dimensions (GPT-J's ``rotary_dim``) for a family
    that reads no ``rope_parameters``; the drawn partial_rotary_factor becomes that width."""

    rope_values: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    """Per RoPE type, parameter candidates that replace ``strategies.ROPE_SCALING``'s for this family; an
    empty tuple leaves the parameter out (the type's default)."""

    rope_layer_types: tuple[str, ...] = ()
    """Layer types whose RoPE is configured apart, each drawing its own parameters: Gemma-3's
    ``rope_parameters`` is keyed by layer type (``{"sliding_attention": {...}, "full_attention": {...}}``).
    Empty: one ``rope_parameters`` for every layer."""

    modules: ModuleNames = ModuleNames()
    """Module names for capture, if the family's differ from Llama's."""

    top_level_original_context: bool = False
    """Whether LongRoPE's original context is stated at top level too, as Phi-3 checkpoints do
    (transformers' Phi3Config replaces rope_parameters' value with its top-level default)."""

    ci_examples: int | None = None
    """Examples the ci profile generates for this family, where fewer than the profile's own (families
    whose examples cost more; the nightly profile searches them as wide as any)."""

    pinned: Mapping[str, str] = field(default_factory=dict)
    """Config keys of this family that change the output but are held on purpose: key -> the
    reason (``parity surface`` lists them; keys pinned for every family are in ``PINNED``)."""

    sizes: tuple[str, ...] = ()
    """The generic tier (an entry derived from transformers' config class, not written here): the size keys,
    under parity's names, that its config class has and the strategies draw; every other key stays at the
    class's default, but those in ``fixed``. Empty for a registry entry."""

    @property
    def tier(self) -> str:
        return "generic" if self.sizes else "full"

    @property
    def family_knobs(self) -> tuple[str, ...]:
        """Config keys (parity's names) this family draws beyond the shape every family has:
        what an example's description and the report's coverage name for it."""
        return (*(("attention_bias",) if self.attention_bias else ()),
                *(("sliding_window",) if self.sliding_windows else ()), *self.knobs,
                *(key for combos in self.knob_sets for key in combos[0]),
                *(self.activation_keys[:1] if len(self.activations) > 1 else ()))

    def __post_init__(self) -> None:
        for name in ("fixed", "knobs", "config_keys", "pinned", "rope_values"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "knob_sets", tuple(tuple(MappingProxyType(dict(c)) for c in combos)
                                                    for combos in self.knob_sets))
        for combos in self.knob_sets:
            keys = set(combos[0]) if combos else set()
            if not keys or any(set(c) != keys for c in combos):
                raise ValueError(f"{self.model_type}: each knob set must offer combinations of the same keys, "
                                 f"got {[dict(c) for c in combos]}")
            if keys & set(self.knobs):
                raise ValueError(f"{self.model_type}: {sorted(keys & set(self.knobs))} drawn both as knobs and "
                                 f"in a knob set")
        lo, hi = self.layers
        if not 1 <= lo <= hi:
            raise ValueError(f"{self.model_type}: layers must be a range 1 <= lo <= hi, got {self.layers}")
        for name in ("head_dims", "kv_heads", "gqa_groups", "intermediate_sizes", "partial_rotary_factors",
                     "rope_thetas", "rms_norm_eps", "vocab_sizes", "tie_word_embeddings", "rope_types",
                     "activations", "activation_keys"):
            if not getattr(self, name):
                raise ValueError(f"{self.model_type}: {name} must offer at least one value")


# Config features that an engine may lack on some device (e.g. an attention backend
# without logit soft-capping): feature name -> the config key that turns it on when
# set (not None). A backend lists what it lacks, with the reason, in its
# ``capabilities()["unsupported_features"]``; ``parity.support.supports`` checks both.
FEATURES: Mapping[str, str] = MappingProxyType({
    "sliding_window": "sliding_window",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
    "shared_expert_gate": "shared_expert_intermediate_size",  # Qwen2-MoE's gated shared expert
    "latent_attention": "kv_lora_rank",  # DeepSeek's multi-head latent attention (MLA)
})


def family_config(spec: ArchSpec, drawn: Mapping[str, Any]) -> dict[str, Any]:
    """The family's config for a config drawn under parity's key names (see ``ArchSpec.config_keys``)."""
    config = {spec.config_keys.get(k, k): v for k, v in drawn.items()}
    if spec.rotary_dim_key:
        rope = config.pop("rope_parameters")
        config[spec.rotary_dim_key] = int(rope.get("partial_rotary_factor", 1.0) * config["head_dim"])
    return config


def canonical_config(arch: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` under parity's key names again: what coverage counts across families."""
    spec = lookup(arch)
    if spec is None:  # a report from a build with other entries
        return dict(config)
    renamed = {v: k for k, v in spec.config_keys.items()}
    out = {renamed.get(k, k): v for k, v in config.items()}
    if spec.rotary_dim_key and spec.rotary_dim_key in out and out.get("head_dim"):
        out["rope_parameters"] = {"partial_rotary_factor": out.pop(spec.rotary_dim_key) / out["head_dim"]}
    return out


def rope_sets(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Each set of RoPE parameters a (canonical) config states, by its key path: ``rope_parameters``, or
    ``rope_parameters.<layer type>`` for a family keyed by layer type (``ArchSpec.rope_layer_types``)."""
    rope = config.get("rope_parameters") or {}
    nested = {f"rope_parameters.{k}": v for k, v in rope.items() if isinstance(v, Mapping)}
    return nested or ({"rope_parameters": rope} if rope else {})


def kv_heads(config: Mapping[str, Any]) -> int:
    """A (canonical) config's key/value heads; unset (DeepSeek's MLA), one per query head, as transformers derives it."""
    return config.get("num_key_value_heads") or config["num_attention_heads"]


def features(config: Mapping[str, Any]) -> list[str]:
    """The optional features an example's config turns on."""
    return [name for name, key in FEATURES.items() if config.get(key) is not None]


def possible_features(spec: ArchSpec) -> list[str]:
    """The optional features some config drawn for ``spec`` may turn on."""
    candidates: dict[str, tuple[Any, ...]] = {key: (value,) for key, value in spec.fixed.items()}
    candidates.update(spec.knobs)
    for combos in spec.knob_sets:
        candidates.update((key, tuple(combo[key] for combo in combos)) for key in combos[0])
    candidates["sliding_window"] = spec.sliding_windows
    return [name for name, key in FEATURES.items() if any(v is not None for v in candidates.get(key, ()))]


# Config keys held on purpose in every family, with the reason (see parity/surface.py).
PINNED: Mapping[str, str] = MappingProxyType({
    "return_dict": "parity reads the model's output object; a tuple output is a calling convention, not numerics",
    "ignore_keys_at_rope_validation": "transformers' own bookkeeping of rope_parameters keys exempt from validation",
})

# Qwen2/Qwen3 windows: use_sliding_window turns sliding_window on for the layers from
# max_window_layers on (transformers derives layer_types from the three).
_QWEN_WINDOWS: dict[str, Any] = {
    "sliding_windows": (4, 7),
    "knobs": {"use_sliding_window": (False, True), "max_window_layers": (0, 1)},
    "pinned": {"layer_types": "derived by the config from use_sliding_window, sliding_window and "
                              "max_window_layers (all drawn); released Qwen checkpoints do not state it"},
}

# Gemma's bidirectional attention is EmbeddingGemma's (an encoder), not a causal LM's.
_BIDIRECTIONAL = {"use_bidirectional_attention": "EmbeddingGemma's non-causal attention: an embedding model, "
                                                  "not served through the engines' causal-LM classes"}
_GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "silu", "relu")
_SECOND_NAME = ("the activation's second name: transformers reads the other one (drawn); released configs "
                "carry both, equal, and engine ports read either, so it is written equal to the drawn one")

_GEMMA3_LAYER_TYPES = ("sliding_attention", "full_attention")
# The reference's own limits with RoPE per layer type (transformers 5.19, modeling_rope_utils.py), so the draws
# stay where it computes what the config says: LongRoPE fails on the second forward past the original context
# (longrope_frequency_update finds its cached long_inv_freq and never assigns the local), so Gemma-3's LongRoPE
# contexts are drawn longer than any served sequence and its long factors never act; YaRN reads truncate from
# the top level of rope_parameters, never from the layer type's entry (_compute_yarn_parameters), so a Gemma-3
# truncate is not drawn (vLLM honours it: the reference would be the one in the wrong).
_GEMMA3_LONGROPE = ("LongRoPE's long factors act only past the original context, where transformers 5.19 fails "
                    "LongRoPE per layer type on the second forward (UnboundLocalError: long_inv_freq in "
                    "longrope_frequency_update): Gemma-3's original contexts are drawn (64, 128) longer than any "
                    "served sequence; released Gemma-3s use linear scaling")

# Families whose config derives head_dim (hidden_size / heads) and ignores the key.
_DERIVED_HEAD_DIM = {"head_dim": "the config has no head_dim: transformers derives it from hidden_size / "
                                 "num_attention_heads, and the drawn value is written equal to that"}

# Mixture-of-experts blocks: experts and their per-token count drawn small-first (top-1 routing of
# four experts first), expert widths next to the dense one. Router weights are drawn like any matrix
# (N(0, 1/hidden)), so on RMS-normed inputs the router logits are ~N(0, 1): top-k margins far above
# fp32 noise (see parity.compare's ambiguity rule for the rare near-tie).
_MOE_SIZES: dict[str, tuple[Any, ...]] = {"num_experts_per_tok": (1, 2, 3), "moe_intermediate_size": (64, 32, 96)}
_MOE_MODULES = ModuleNames(router="gate")
# An MoE example takes ~4.5 s on the 2-core CI machine (3 s for a dense one): half the ci examples.
_MOE_CI_EXAMPLES = 4

# Qwen2-MoE and Qwen3-MoE: a window (use_sliding_window), and decoder_sparse_step / mlp_only_layers making
# some layers dense (an MLP intermediate_size wide; the config class takes only a list of layers).
_QWEN_MOE_KNOBS = {"num_experts": (4, 8), **_MOE_SIZES, "decoder_sparse_step": (1, 2), "mlp_only_layers": ([], [0]),
                   "use_sliding_window": (False, True)}
# Mixtures of experts: up to three layers (each example ~4.5 s on 2 cores), a router named "gate", fewer ci
# examples.
_MOE: dict[str, Any] = {"layers": (1, 3), "modules": _MOE_MODULES, "ci_examples": _MOE_CI_EXAMPLES}
_QWEN_MOE: dict[str, Any] = {**_MOE, "sliding_windows": _QWEN_WINDOWS["sliding_windows"]}

# GLM-4-MoE's grouped routing: (experts, groups, groups kept, experts per token), each valid together (the
# groups divide the experts, two or more per group, as its group score sums each group's best two; the
# kept groups hold at least top-k experts). Ungrouped first (released GLM-4.5/4.6: one group), then groups
# that drop experts (one of two, two of four) and one that keeps every group.
_GLM4_MOE_GROUPS = tuple({"n_routed_experts": e, "n_group": g, "topk_group": k, "num_experts_per_tok": t}
                         for e, g, k, t in ((4, 1, 1, 1), (4, 1, 1, 2), (8, 1, 1, 3), (4, 2, 1, 2), (8, 2, 1, 3),
                                            (8, 4, 2, 2), (8, 4, 2, 4), (8, 2, 2, 2)))

# Token ids of the full-size vocabularies must not index a tiny one.
_NO_SPECIAL_TOKENS = {"pad_token_id": None, "eos_token_id": None, "bos_token_id": None}

# Gemma-2 and Gemma-3: tied heads as released (untied ones drawn too, as for gemma), optional attention
# biases, windows shorter than the prompts on the sliding layers.
_GEMMA_WINDOWED: dict[str, Any] = {"tie_word_embeddings": (True, False), "attention_bias": (False, True),
                                   "sliding_windows": (4, 7), "activations": _GEMMA_ACTIVATIONS,
                                   "fixed": _NO_SPECIAL_TOKENS}

# DeepSeek-V3's routing as released: sigmoid scores, grouped top-k with a correction bias. transformers' DeepSeek-V3
# always routes that way and reads neither key; engine ports read both from config.json (vLLM's softmax default drops
# the correction bias, SGLang's port fails without them), and released V3 configs state both.
_DEEPSEEK_ROUTING = {"topk_method": "noaux_tc", "scoring_func": "sigmoid"}
# vLLM's CPU MLA decode kernel (mla_decode_kvcache_cpu) is compiled for one latent cache width only: kv_lora_rank 512
# plus qk_rope_head_dim 64 (CPUMLABackend.get_supported_head_sizes() == [576]), the widths of every released V2/V3.
_MLA_WIDTHS = ("vLLM's CPU MLA decode kernel is compiled only for a 576-wide latent cache (kv_lora_rank 512 + "
               "qk_rope_head_dim 64, CPUMLABackend.get_supported_head_sizes()), the widths of released DeepSeek-V2/V3")

ARCHITECTURES: Mapping[str, ArchSpec] = MappingProxyType({
    "llama": ArchSpec(
        model_type="llama",
        architecture="LlamaForCausalLM",
        attention_bias=(False, True),
        knobs={"mlp_bias": (False, True)},
    ),
    # GLM-4-0414: partial rotary with interleaved pairs, explicit head_dim,
    # q/k/v bias and "sandwich" norms after attention and after the MLP.
    "glm4": ArchSpec(
        model_type="glm4",
        architecture="Glm4ForCausalLM",
        partial_rotary_factors=(1.0, 0.5, 0.25, 0.75),
        attention_bias=(True, False),  # Glm4Config's default is True
        # Its defaults name token ids of the 151k vocabulary; a tiny vocabulary must not.
        fixed={"pad_token_id": None, "eos_token_id": None},
    ),
    # q/k/v projections always carry a bias; head_dim is always hidden / heads.
    "qwen2": ArchSpec(
        model_type="qwen2",
        architecture="Qwen2ForCausalLM",
        explicit_head_dim=False,
        **_QWEN_WINDOWS,
    ),
    # Per-head RMSNorm on q and k before RoPE (q_rot/k_rot are after both).
    "qwen3": ArchSpec(
        model_type="qwen3",
        architecture="Qwen3ForCausalLM",
        attention_bias=(False, True),
        **_QWEN_WINDOWS,
    ),
    # Sliding-window attention over the whole stack.
    "mistral": ArchSpec(
        model_type="mistral",
        architecture="MistralForCausalLM",
        sliding_windows=(None, 4, 7),
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # GELU-tanh MLP, RMSNorm scaled by (1 + weight), embeddings scaled by sqrt(hidden)
    # (so `embed`, the stream entering layer 0, includes the scale).
    # The activation is named twice, as in released configs: transformers reads hidden_act,
    # vLLM hidden_activation (tanh approximation, transformers PR 29402).
    "gemma": ArchSpec(
        model_type="gemma",
        architecture="GemmaForCausalLM",
        # Released Gemmas tie embeddings; untied ones are drawn too (vLLM refuses an untied
        # checkpoint's lm_head, SGLang ignores it: see parity/known_issues.py).
        tie_word_embeddings=(True, False),
        attention_bias=(False, True),
        activations=_GEMMA_ACTIVATIONS,
        activation_keys=("hidden_act", "hidden_activation"),
        pinned={**_BIDIRECTIONAL, "hidden_activation": _SECOND_NAME},
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # Fused qkv_proj and gate_up_proj in the checkpoint itself; LongRoPE as in Phi-3-128k.
    "phi3": ArchSpec(
        model_type="phi3",
        architecture="Phi3ForCausalLM",
        explicit_head_dim=False,
        partial_rotary_factors=(1.0, 0.5, 0.75),
        rope_types=("default", "longrope"),  # Phi3Config refuses the other types
        top_level_original_context=True,
        pinned={"rope_parameters.original_max_position_embeddings":
                "Phi3Config takes the original context from its top-level key (drawn); the nested copy is "
                "written equal to it because engine ports read that one"},
        sliding_windows=(None, 4, 7),  # Phi-3-mini-4k carries a window
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # Gemma plus: tanh soft-capping of attention scores and of the logits (caps small
    # enough to bite on O(1) activations), "sandwich" norms after attention and after the
    # MLP, and sliding-window attention on every other layer (layer_types' default).
    "gemma2": ArchSpec(
        model_type="gemma2",
        architecture="Gemma2ForCausalLM",
        # query_pre_attn_scalar: 256 as in Gemma-2 2B/9B, or the head size's own scale.
        knobs={"attn_logit_softcapping": (None, 2.0, 5.0), "final_logit_softcapping": (None, 3.0),
               "query_pre_attn_scalar": (256, 32)},
        # Released Gemma-2 configs carry both keys; SGLang 0.5.23 reads only hidden_act
        # (a transformers-5-only config fails to load there with an AttributeError).
        activation_keys=("hidden_activation", "hidden_act"),
        pinned={**_BIDIRECTIONAL, "hidden_act": _SECOND_NAME,
                "layer_types": "Gemma-2's alternating sliding/full layers (transformers' default, every released "
                               "Gemma-2) are drawn through sliding_window; other layouts are not Gemma-2 checkpoints"},
        **_GEMMA_WINDOWED,
    ),
    # Gemma-2's layout (sandwich norms, final soft-capping, sliding and full layers, query_pre_attn_scalar)
    # plus per-head RMSNorm on q and k before RoPE, and RoPE configured per layer type (rope_parameters keyed
    # by sliding_attention / full_attention: released Gemma-3s rotate local layers with base 10^4, global
    # ones with 10^6 and a linear factor 8). sliding_window_pattern lays out the layers: alternating, every
    # 6th full as released (so the drawn depths are all local), or all full. attn_logit_softcapping is not
    # drawn: transformers' Gemma-3 never passes it to attention (measured neutral; released configs: null).
    "gemma3_text": ArchSpec(
        model_type="gemma3_text",
        architecture="Gemma3ForCausalLM",
        knobs={"sliding_window_pattern": (2, 6, 1), "final_logit_softcapping": (None, 3.0),
               "query_pre_attn_scalar": (256, 32)},
        rope_layer_types=_GEMMA3_LAYER_TYPES,
        rope_values={"longrope": {"original_max_position_embeddings": (64, 128)}, "yarn": {"truncate": ()}},
        activation_keys=("hidden_activation",),  # Gemma3TextConfig has no hidden_act
        pinned={**_BIDIRECTIONAL,
                "layer_types": "derived by the config from sliding_window_pattern (drawn: 2, 6 as released, 1), "
                               "the form released Gemma-3 configs state",
                **{f"rope_parameters.{layer_type}.long_factor": _GEMMA3_LONGROPE for layer_type in _GEMMA3_LAYER_TYPES}},
        **_GEMMA_WINDOWED,
    ),
    # Partial rotary (a quarter of each head by default, rotate-half pairs on the leading
    # slice) and LayerNorm with a bias instead of RMSNorm; optional q/k/v bias, and
    # StableLM-2-12B's per-head q/k LayerNorms and parallel attention + MLP.
    "stablelm": ArchSpec(
        model_type="stablelm",
        architecture="StableLmForCausalLM",
        explicit_head_dim=False,
        partial_rotary_factors=(0.25, 0.5, 1.0),
        knobs={"use_qkv_bias": (False, True), "qk_layernorm": (False, True), "use_parallel_residual": (False, True)},
        config_keys={"rms_norm_eps": "layer_norm_eps"},
        states_head_dim=False,
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # Parallel attention and MLP off one LayerNorm, interleaved (rotate-every-two) RoPE on
    # the first rotary_dim dimensions, fixed base 10000, a biased lm_head, no GQA; other
    # config and module names (transformer.h[i].attn, ln_f).
    "gpt_j": ArchSpec(
        model_type="gptj",
        architecture="GPTJForCausalLM",
        explicit_head_dim=False,
        gqa_groups=(1,),
        partial_rotary_factors=(1.0, 0.5, 0.25),
        rope_thetas=(10000.0,),
        tie_word_embeddings=(False, True),  # both engines refuse tied ones (parity/known_issues.py)
        config_keys={"rms_norm_eps": "layer_norm_epsilon", "intermediate_size": "n_inner"},
        rotary_dim_key="rotary_dim",
        rope_types=("default",),  # GPTJConfig has no rope_parameters
        activations=("gelu_new", "gelu", "relu", "silu"),
        activation_keys=("activation_function",),
        # head_dim stays stated: GPT-J's config.json names its sizes n_embd and n_head, and capture
        # reads the head size from config.json.
        pinned={**_DERIVED_HEAD_DIM,
                "num_key_value_heads": "GPT-J has no grouped-query attention: GPTJConfig ignores the key, drawn "
                                       "equal to the head count",
                "n_positions": "GPT-J's RoPE is never scaled, so its context length (max_position_embeddings) "
                               "changes nothing transformers computes"},
        modules=ModuleNames(decoder="transformer", layers="h", final_norm="ln_f", attention="attn"),
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # Qwen3 attention (q/k norms) with a softmax top-k router over experts; norm_topk_prob renormalises
    # the selected weights (Qwen3-30B-A3B: True, the config's default False). Its window covers every
    # layer: transformers' Qwen3-MoE reads no max_window_layers (measured neutral).
    "qwen3_moe": ArchSpec(
        model_type="qwen3_moe",
        architecture="Qwen3MoeForCausalLM",
        attention_bias=(False, True),
        knobs={**_QWEN_MOE_KNOBS, "norm_topk_prob": (True, False)},
        **_QWEN_MOE,
    ),
    # Qwen1.5-MoE / Qwen2-MoE: Qwen2 attention (q/k/v bias, qkv_bias) and, beside the routed experts, a
    # shared expert whose output is scaled by sigmoid(shared_expert_gate(x)).
    "qwen2_moe": ArchSpec(
        model_type="qwen2_moe",
        architecture="Qwen2MoeForCausalLM",
        explicit_head_dim=False,
        knobs={**_QWEN_MOE_KNOBS, "max_window_layers": _QWEN_WINDOWS["knobs"]["max_window_layers"],
               "norm_topk_prob": (False, True), "shared_expert_intermediate_size": (64, 32, 128),
               "qkv_bias": (True, False)},
        pinned=_QWEN_WINDOWS["pinned"],
        **_QWEN_MOE,
    ),
    # OLMoE: every layer sparse, experts intermediate_size wide, RMSNorm over the whole q and k
    # projections (not per head, and sized hidden_size: head_dim must be hidden / heads, so it is
    # left to the config to derive), optional clipping of q/k/v.
    "olmoe": ArchSpec(
        model_type="olmoe",
        architecture="OlmoeForCausalLM",
        explicit_head_dim=False,
        states_head_dim=False,
        rms_norm_eps=(1e-5, 1e-6, 1e-12, 1e-3),  # OLMoE's own first
        attention_bias=(False, True),
        knobs={"num_experts": (4, 8), "num_experts_per_tok": _MOE_SIZES["num_experts_per_tok"],
               "norm_topk_prob": (False, True), "clip_qkv": (None, 0.5)},
        fixed=_NO_SPECIAL_TOKENS,
        **_MOE,
    ),
    # Mistral attention with eight experts, two per token, always renormalised; transformers 5 calls
    # the block ``mlp``, the checkpoint and both engines ``block_sparse_moe``.
    "mixtral": ArchSpec(
        model_type="mixtral",
        architecture="MixtralForCausalLM",
        layers=(1, 3),
        knobs={"num_local_experts": (4, 8), "num_experts_per_tok": _MOE_SIZES["num_experts_per_tok"]},
        sliding_windows=(None, 4, 7),
        modules=ModuleNames(mlp=("block_sparse_moe", "mlp"), router="gate"),
        ci_examples=_MOE_CI_EXAMPLES,
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # GLM-4.5/4.6/4.7: rotate-half RoPE on part of each head (half as released), optional per-head q/k norms and
    # q/k/v bias; the first first_k_dense_replace layers dense (an MLP intermediate_size wide), the others a
    # sigmoid router whose experts are chosen by score + e_score_correction_bias (a checkpoint tensor, randomised
    # like a bias: it moves the choice, never the weights) among the topk_group best of n_group expert groups,
    # weighted by the plain scores (renormalised with norm_topk_prob) times routed_scaling_factor (2.5 in
    # GLM-4.5), beside n_shared_experts experts every token goes through.
    "glm4_moe": ArchSpec(
        model_type="glm4_moe",
        architecture="Glm4MoeForCausalLM",
        partial_rotary_factors=(0.5, 1.0, 0.25, 0.75),
        attention_bias=(False, True),
        knobs={"use_qk_norm": (False, True), "first_k_dense_replace": (0, 1),
               "moe_intermediate_size": _MOE_SIZES["moe_intermediate_size"], "n_shared_experts": (1, 2),
               "routed_scaling_factor": (1.0, 2.5), "norm_topk_prob": (True, False)},
        knob_sets=(_GLM4_MOE_GROUPS,),
        fixed=_NO_SPECIAL_TOKENS,
        **_MOE,
    ),
    # Command R7B / Command A: LayerNorm without bias, attention and MLP in parallel off one norm, logits
    # multiplied by logit_scale, interleaved (rotate-every-two) RoPE on the sliding-window layers only:
    # every sliding_window_pattern-th layer attends to the whole prompt with no position encoding at all.
    # head_dim is always hidden / heads (the config overwrites a stated one).
    "cohere2": ArchSpec(
        model_type="cohere2",
        architecture="Cohere2ForCausalLM",
        explicit_head_dim=False,
        tie_word_embeddings=(True, False),  # released Cohere2 checkpoints tie the head
        attention_bias=(False, True),
        sliding_windows=(4, 7),
        # Released: logit_scale 0.25 (R7B) and 0.0625 (the config's default); 1 is no scaling.
        knobs={"logit_scale": (0.0625, 0.25, 1.0), "sliding_window_pattern": (4, 2, 1)},
        config_keys={"rms_norm_eps": "layer_norm_eps"},
        pinned={"layer_types": "derived by the config from sliding_window_pattern (drawn) and the layer count, "
                               "as released Cohere2 configs state it"},
        modules=ModuleNames(qk_input="attn", stream_first=True),
        fixed=_NO_SPECIAL_TOKENS,
    ),
    # DeepSeek-V3 (V2 by its knobs): multi-head latent attention (q through an optional low-rank q_lora_rank
    # bottleneck, k/v from one kv_lora_rank latent; RoPE decoupled on a qk_rope_head_dim slice of q and on one key
    # shared by every head, in interleaved pairs unless rope_interleave is False) and DeepSeek-MoE: sigmoid router
    # scores, expert groups of which topk_group are kept (ranked by their two best biased scores), the correction
    # bias for the selection only, routed_scaling_factor on the routed sum, n_shared_experts always-on experts,
    # and the first first_k_dense_replace layers dense. head_dim is the config's own qk_rope_head_dim.
    "deepseek_v3": ArchSpec(
        model_type="deepseek_v3",
        architecture="DeepseekV3ForCausalLM",
        head_dims=(64,),
        kv_heads=(1, 2, 4),  # the head count: num_key_value_heads is left to the config to derive (pinned)
        gqa_groups=(1,),
        layers=(2, 3),
        attention_bias=(False, True),
        knobs={"q_lora_rank": (None, 32), "qk_nope_head_dim": (32, 64), "v_head_dim": (64, 32),
               "n_routed_experts": (8, 16), "num_experts_per_tok": (2, 1), "n_group": (2, 4), "topk_group": (1, 2),
               "routed_scaling_factor": (2.5, 1.0), "norm_topk_prob": (True, False), "n_shared_experts": (1, 2),
               "first_k_dense_replace": (1, 0), "moe_intermediate_size": _MOE_SIZES["moe_intermediate_size"],
               "rope_interleave": (True, False)},
        # transformers' DeepSeek-V3 needs a factor for every scaled RoPE type (yarn_apply_mscale reads it).
        rope_values={"longrope": {"factor": (2.0,)}},
        pinned={"kv_lora_rank": _MLA_WIDTHS, "qk_rope_head_dim": _MLA_WIDTHS,
                "head_dim": "DeepseekV3Config derives head_dim from qk_rope_head_dim (pinned) whatever is stated; the "
                            "drawn value is written equal to it",
                "num_key_value_heads": "MLA has a key and a value per query head (kv_b_proj makes num_attention_heads "
                                       "of each): any other value than the head count fails in transformers' "
                                       "attention, so it is left unset for the config to derive (released configs "
                                       "state the head count)",
                "max_position_embeddings": "changes nothing transformers' DeepSeek-V3 computes on parity's prompts: "
                                           "dynamic NTK rescales only past it (128 or more; prompts reach 47 "
                                           "positions), and LongRoPE derives its factor from it only when none is "
                                           "stated, which this family always states; drawn all the same, for the "
                                           "engines' rotary tables",
                **dict.fromkeys(_DEEPSEEK_ROUTING, "read by engine ports only: transformers' DeepSeek-V3 always routes "
                                                   "with sigmoid scores and the correction bias, which these values "
                                                   "ask of the engines")},
        modules=ModuleNames(router="gate", latent_attention=True),
        ci_examples=_MOE_CI_EXAMPLES,
        # moe_layer_freq: every layer past the dense ones sparse, as released configs state it; transformers'
        # DeepSeek-V3 has no such key, SGLang's port fails without it.
        fixed={**_NO_SPECIAL_TOKENS, **_DEEPSEEK_ROUTING, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
               "num_key_value_heads": None, "moe_layer_freq": 1},
    ),
})


def did_you_mean(name: str, known: Iterable[str], more: Iterable[str] = (), more_text: str = "") -> str:
    """The hint that ends an unknown-name error: what is known (and ``more_text`` for the ``more`` names too
    many to list), and the closest match among all of them."""
    known, more = list(known), list(more)
    close = get_close_matches(name, known + more, n=1)
    return (f"known: {', '.join(known)}{more_text}." + (f" Did you mean {close[0]!r}?" if close else ""))


MEASURED = Path(__file__).with_name("measured")
"""What parity measured of transformers and the engines: the generic table and the config surfaces."""

GENERIC_TABLE = MEASURED / "generic.json"
"""The generic tier's derived entries, written by ``parity generic --write``."""

GENERIC_SIZES: Mapping[str, tuple[Any, ...]] = MappingProxyType({
    "head_dims": (32, 64), "gqa_groups": (1, 2), "layers": (1, 2), "intermediate_sizes": (64, 128),
    "vocab_sizes": (256, 1000)})
"""What a generic entry draws: small, and plainest first, like every entry."""

GENERIC_SHRUNK = ("shrunk with the model by the generic tier (parity.worker.generic.SHRUNK): released values "
                  "would make the tiny model large")
GENERIC_HYBRID = ("a hybrid whose first full-attention layer comes after its first few linear-attention ones: "
                  "drawn at the derived layer count only (parity.worker.generic.HYBRID_LAYERS)")
GENERIC_UNSET = "a token id of the released vocabulary, past the tiny one: unset by the generic tier"
GENERIC_PINNED: Mapping[str, str] = MappingProxyType({
    "layer_types": "a list with one entry per layer, sized to the probe's layer count: the generic tier draws the "
                   "layer count, so it leaves the list to the config class, which derives it from that count",
    "add_cross_attention": "GPT-2 as the decoder of an encoder-decoder model (cross-attention weights, fed encoder "
                           "states): not the causal LM the engines serve (both assert it off)",
    **{key: "latent attention's latent is 576 wide (kv_lora_rank 512 + qk_rope_head_dim 64) in every released "
            "MLA model, the only width vLLM's CPU MLA decode kernel takes" for key in ("kv_lora_rank", "qk_rope_head_dim")},
})
"""Keys the generic tier measures to change the output yet does not draw, each with why."""


def surface_path(transformers_version: str) -> Path:
    """The measured config surfaces for a transformers version (``parity surface --write``)."""
    return MEASURED / f"surface-transformers-{transformers_version}.json"


@functools.cache
def measured_surfaces(transformers_version: str) -> Mapping[str, Any]:
    """The stored surface measurement for a transformers version, per family; empty before the first."""
    path = surface_path(transformers_version)
    return json.loads(path.read_text()) if path.exists() else {}


@functools.cache
def generic_knobs() -> Mapping[str, Mapping[str, Any]]:
    """Per generic model type, the keys its entry draws beyond the sizes, each with its class default first and
    then values measured to change the reference's output (``parity surface --write``, for the transformers
    version the generic table was derived with)."""
    version = generic_table()["versions"].get("transformers")
    stored = measured_surfaces(version) if version else {}
    return {arch: measured["knobs"] for arch, measured in stored.items() if measured.get("knobs")}


@functools.cache
def generic_table() -> Mapping[str, Any]:
    """The stored generic table: the engines' versions it was derived for, and per model type its derived
    entry or why none could be derived. Empty before the first ``parity generic --write``."""
    return json.loads(GENERIC_TABLE.read_text()) if GENERIC_TABLE.exists() else {"versions": {}, "entries": {}}


def registry_model_types() -> set[str]:
    """The model types the registry's entries cover (an entry's name need not be its model type: GPT-J's)."""
    return {spec.model_type for spec in ARCHITECTURES.values()}


@functools.cache
def generic_entries() -> Mapping[str, ArchSpec]:
    """The generic tier: an entry for every model type in the generic table that parity could derive a tiny
    model for and that no registry entry covers."""
    entries, covered = {}, registry_model_types()
    for model_type, derived in generic_table()["entries"].items():
        if "error" in derived or model_type in covered:
            continue
        keys = derived["keys"]
        # A config class without key/value heads is plain multi-head attention: kv heads are the heads (and
        # latent attention's, ``multi_head``, as many as the query heads).
        mha = "num_key_value_heads" not in keys or derived.get("multi_head")
        drawn = {**GENERIC_SIZES, **({"kv_heads": (2, 4), "gqa_groups": (1,)} if mha else {}),
                 **({"layers": (derived["layers"],) * 2} if "layers" in derived else {})}
        entries[model_type] = ArchSpec(
            model_type=model_type, architecture=derived["architecture"], **drawn,
            explicit_head_dim=False, states_head_dim="head_dim" in keys, fixed=derived["fixed"],
            config_keys={k: v for k, v in keys.items() if k != v}, modules=ModuleNames(coarse=True),
            sizes=tuple(keys), ci_examples=1,
            knobs={k: tuple(v) for k, v in generic_knobs().get(model_type, {}).items()},
            pinned={**{k: GENERIC_UNSET if k.endswith("token_id") else GENERIC_SHRUNK for k in derived["fixed"]},
                    **GENERIC_PINNED, **({keys["num_hidden_layers"]: GENERIC_HYBRID} if "layers" in derived else {})})
    return MappingProxyType(entries)


def lookup(name: str) -> ArchSpec | None:
    """The entry named ``name``, of either tier; None where there is none (a report from another build)."""
    return ARCHITECTURES.get(name) or generic_entries().get(name)


def get(name: str) -> ArchSpec:
    spec = lookup(name)
    if spec is None:
        raise UnknownArchitecture(
            f"unknown architecture {name!r}; "
            f"{did_you_mean(name, ARCHITECTURES, generic_entries(), ' and the generic tier (parity archs)')} "
            f"(to add one, add an entry to ARCHITECTURES in parity/registry.py)"
        ) from None
    return spec
