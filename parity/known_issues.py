"""Divergences parity found in released engines, investigated and written up.

A result whose first divergence matches an entry is still reported as
``diverged`` (an error matching an entry's message, as ``error``), with the
entry's diagnosis attached as ``known_issue``. It does
not fail the run (exit code) or drive the search (no shrinking), so a known
engine bug neither hides new ones nor costs a shrink per example. Entries name
the engine version they were diagnosed on; a newer engine is held to ``pass``
again. Delete an entry when the engine fixes the bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping


@dataclass(frozen=True)
class KnownIssue:
    engine: str
    version: str
    """Engine version the diagnosis was made on (exact match)."""

    arch: str
    kinds: tuple[str, ...]
    """First-divergence tensor kinds the bug explains; ``"error"`` for a failure to load or run."""

    applies: Callable[[Mapping[str, Any]], bool]
    """Which configs trigger it."""

    diagnosis: str

    message: str = ""
    """Text the error's reason must contain (entries for ``"error"``), so only this failure matches."""


def _partial_rotary(config: Mapping[str, Any]) -> bool:
    return (config.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0) < 1.0


def _partial_longrope(config: Mapping[str, Any]) -> bool:
    return _partial_rotary(config) and config["rope_parameters"].get("rope_type") == "longrope"


def _longrope_outgrown(config: Mapping[str, Any]) -> bool:
    """LongRoPE with an original context the prompts and decoding outgrow (engines' max_model_len >= 64)."""
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_type") == "longrope" and rope["original_max_position_embeddings"] < 64


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "vllm", "0.32.0", "qwen3", ("attn_out",), lambda c: bool(c.get("attention_bias")),
        "vLLM's Qwen3Attention builds o_proj without bias (qwen3.py) and its loader drops the checkpoint's "
        "o_proj.bias as an 'extra GPTQ bias'; transformers applies attention_bias to o_proj too",
    ),
    KnownIssue(
        "sglang", "0.5.23", "gemma", ("mlp_out",), lambda c: True,
        "SGLang GemmaMLP hard-codes exact GELU (GeluAndMul('none')) and ignores the config's "
        "gelu_pytorch_tanh; layer 0's MLP output is off by ~2e-4 relative",
    ),
    KnownIssue(
        "sglang", "0.5.23", "phi3", ("q_rot", "k_rot"), _partial_rotary,
        "SGLang's Phi3 (LlamaAttention) reads partial_rotary_factor only as a top-level config attribute; "
        "transformers 5 keeps it in rope_parameters, so SGLang rotates the whole head",
    ),
    KnownIssue(
        "sglang", "0.5.23", "phi3", ("error",), _partial_longrope,
        "SGLang's Phi3 ignores partial_rotary_factor in rope_parameters (see its q_rot entry); with LongRoPE it "
        "sizes the rotary tables for the whole head, the config's short/long factors (one per rotated pair) do "
        "not fit and the model fails to load",
        message="_compute_inv_freq",
    ),
    KnownIssue(
        "sglang", "0.5.23", "stablelm", ("q_rot", "k_rot"),
        lambda c: (c.get("rope_parameters") or {}).get("partial_rotary_factor", 0.25) != 0.25,
        "SGLang's StableLM reads the top-level partial_rotary_factor attribute, which transformers 5 fills with "
        "its backward-compatible default 0.25 (and writes to config.json) next to the rope_parameters it "
        "applies itself; any other factor is rotated over a quarter of the head",
    ),
    KnownIssue(
        "sglang", "0.5.23", "stablelm", ("logits",), lambda c: bool(c.get("tie_word_embeddings")),
        "SGLang's StableLM never ties lm_head to embed_tokens: with tie_word_embeddings the checkpoint has no "
        "lm_head.weight and the head keeps its uninitialised memory (logits off by up to 1e11 relative)",
    ),
    KnownIssue(
        "vllm", "0.32.0", "stablelm", ("error",),
        lambda c: bool(c.get("qk_layernorm") or c.get("use_parallel_residual")),
        "vLLM's StableLM port has neither per-head q/k LayerNorms (qk_layernorm) nor the parallel residual "
        "(use_parallel_residual, whose layers have no post-attention norm): StableLM-2-12B-style checkpoints "
        "fail to load", message="layernorm",
    ),
    KnownIssue(
        "sglang", "0.5.23", "stablelm", ("error",), lambda c: bool(c.get("qk_layernorm")),
        "SGLang's StableLM port has no per-head q/k LayerNorms: a qk_layernorm checkpoint fails to load",
        message="_layernorm.norms",
    ),
    KnownIssue(
        "sglang", "0.5.23", "stablelm", ("mlp_out",), lambda c: bool(c.get("use_parallel_residual")),
        "SGLang's StableLM ignores use_parallel_residual: its MLP reads a post-attention LayerNorm of h + attn, "
        "a norm the checkpoint does not have (left at its initial values), instead of the shared input norm; "
        "silently wrong from layer 0",
    ),
    KnownIssue(
        "sglang", "0.5.23", "gpt_j", ("logits",), lambda c: True,
        "SGLang's GPTJForCausalLM builds and loads lm_head with a bias, but LogitsProcessor.forward has no "
        "bias argument and the model never adds it: logits lack lm_head.bias",
    ),
    KnownIssue(
        "vllm", "0.32.0", "phi3", ("q_rot", "k_rot"), _longrope_outgrown,
        "by design: vLLM applies LongRoPE's long factors to every token whenever max_model_len exceeds "
        "original_max_position_embeddings (so its KV cache never mixes the two; it logs a warning), "
        "transformers the short ones until a sequence outgrows the original context",
    ),
    KnownIssue(
        "sglang", "0.5.23", "phi3", ("q_rot", "k_rot"), _longrope_outgrown,
        "SGLang picks LongRoPE's long or short factors for a whole batch, long once any position exceeds "
        "original_max_position_embeddings; transformers decides per sequence, long once its length exceeds "
        "it (one token earlier): a short prompt batched with a long one, or a decode step at that boundary, "
        "is rotated differently",
    ),
    KnownIssue(
        "sglang", "0.5.23", "mistral", ("attn_out",), lambda c: c.get("sliding_window") is not None,
        "SGLang's Mistral (LlamaForCausalLM) never reads sliding_window: it attends to the whole prompt "
        "once a prompt outgrows the window",
    ),
)


def listed(engine: str, version: str, arch: str) -> list[KnownIssue]:
    """The known issues of one engine version on one architecture."""
    return [i for i in KNOWN_ISSUES if (i.engine, i.version, i.arch) == (engine, version, arch)]


def explain(engines: Iterable[tuple[str, str]], arch: str, config: Mapping[str, Any], kind: str,
            message: str = "") -> str | None:
    """The diagnosis of a known issue explaining a divergence of ``kind`` (or an error with ``message``)
    on any of ``engines`` (name, version)."""
    for engine, version in engines:
        for issue in listed(engine, version, arch):
            if kind in issue.kinds and issue.message in message and issue.applies(config):
                return f"{engine} {version}: {issue.diagnosis}"
    return None
