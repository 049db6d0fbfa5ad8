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

from dataclasses import dataclass, field
from difflib import get_close_matches
from types import MappingProxyType
from typing import Any, Mapping


class UnknownArchitecture(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


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

    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Config values held constant (e.g. token ids that must fit a tiny vocabulary)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        lo, hi = self.layers
        if not 1 <= lo <= hi:
            raise ValueError(f"{self.model_type}: layers must be a range 1 <= lo <= hi, got {self.layers}")
        for name in ("head_dims", "kv_heads", "gqa_groups", "intermediate_sizes", "partial_rotary_factors",
                     "rope_thetas", "rms_norm_eps", "vocab_sizes", "tie_word_embeddings"):
            if not getattr(self, name):
                raise ValueError(f"{self.model_type}: {name} must offer at least one value")


ARCHITECTURES: Mapping[str, ArchSpec] = MappingProxyType({
    "llama": ArchSpec(
        model_type="llama",
        architecture="LlamaForCausalLM",
    ),
    # GLM-4-0414: partial rotary with interleaved pairs, explicit head_dim,
    # q/k/v bias and "sandwich" norms after attention and after the MLP.
    "glm4": ArchSpec(
        model_type="glm4",
        architecture="Glm4ForCausalLM",
        partial_rotary_factors=(1.0, 0.5, 0.25, 0.75),
        # Its defaults name token ids of the 151k vocabulary; a tiny vocabulary must not.
        fixed={"pad_token_id": None, "eos_token_id": None},
    ),
})


def get(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        close = get_close_matches(name, list(ARCHITECTURES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownArchitecture(
            f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}.{hint} "
            f"(to add one, add an entry to ARCHITECTURES in parity/registry.py)"
        ) from None
