"""Tolerances derived from a noise floor, not magic numbers.

The reference runs twice: in fp64 (the truth) and in the dtype under test. The
reference's own error at that dtype, per tensor, is the noise floor: what an
equally correct implementation with another summation order or kernel can
differ by. A backend passes a tensor when its error against fp64 stays within
``FLOOR_FACTOR`` times that floor, and never needs to be better than a few
units in the last place of the dtype (the floor of an exact op, such as an
embedding lookup, is zero). Routing weights take at least the error their router logits' own
error accounts for (``parity.compare.routing_floor``).

Measured on CPU, fp32 (ci profile, every tensor of 16 examples): vLLM's error
is at most 2.9x the reference's own floor, SGLang's 2.1x, vLLM vs SGLang 3.3x
(against a band of 2 x 10x); the seeded bugs are 1e-2 and up. A factor of 10
keeps both sides apart by an order of magnitude.
"""

from __future__ import annotations

FLOOR_FACTOR = 10.0

# Unit roundoff per dtype.
EPS = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
ULPS = 2.0  # floor of exact ops (embedding lookups): a couple of roundings, not zero

# For engine-vs-engine comparisons both sides carry their own error.
PAIR_FACTOR = 2.0


def within(rel_l2: float, band: float, non_finite: bool = False) -> bool:
    """Whether an error stays inside its band; NaN and non-finite candidates never do."""
    return not non_finite and rel_l2 <= band


def band(floor: float, dtype: str) -> float:
    """Largest relative L2 error a correct backend may show on a tensor with this floor."""
    try:
        eps = EPS[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(EPS)}") from None
    return FLOOR_FACTOR * max(floor, ULPS * eps)
