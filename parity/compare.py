"""Pure comparison of canonical activations: arrays in, typed records out, all in float64."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity import schema, tolerance
from parity.records import Divergence, Metrics, TensorRow

Tensors = Mapping[str, np.ndarray]

# An engine reading uninitialised memory hands over values whose squares overflow float64: the
# norm is then inf, which is the answer, not a warning for the user.
_OVERFLOW_IS_INF = np.errstate(over="ignore")


@_OVERFLOW_IS_INF
def metrics(candidate: np.ndarray, reference: np.ndarray) -> Metrics:
    """Relative L2, max abs, cosine and the worst token (row) with both values at the worst element."""
    if candidate.shape != reference.shape:
        raise ValueError(f"shape {candidate.shape} != reference shape {reference.shape}")
    c = candidate.astype(np.float64)
    r = reference.astype(np.float64)
    finite = bool(np.isfinite(c).all())
    diff = np.abs(c - r) if finite else np.where(np.isfinite(c), np.abs(c - r), np.inf)
    ref_norm = float(np.linalg.norm(r))
    err_norm = float(np.linalg.norm(c - r)) if finite else float("inf")
    rel = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf"))
    denom = float(np.linalg.norm(c)) * ref_norm
    cosine = float(np.dot(c.ravel(), r.ravel()) / denom) if finite and denom > 0 else (1.0 if err_norm == 0 else 0.0)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else (0,)
    return Metrics(
        rel_l2=rel, max_abs=float(diff.max()) if diff.size else 0.0, cosine=cosine,
        worst_token=int(worst[0]), worst_index=[int(i) for i in worst],
        candidate_value=float(c[worst]) if diff.size else 0.0,
        reference_value=float(r[worst]) if diff.size else 0.0,
        non_finite=not finite,
    )


@_OVERFLOW_IS_INF
def per_token(candidate: np.ndarray, reference: np.ndarray) -> list[float]:
    """Relative L2 of each token (row): shows whether an error sits at one position or everywhere."""
    c = candidate.astype(np.float64).reshape(len(candidate), -1)
    r = reference.astype(np.float64).reshape(len(reference), -1)
    err = np.where(np.isfinite(c).all(axis=1), np.linalg.norm(np.nan_to_num(c) - r, axis=1), np.inf)
    ref = np.linalg.norm(r, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref > 0, err / ref, np.where(err == 0, 0.0, np.inf))
    return [float(x) for x in rel]


def relative_l2(candidate: np.ndarray, reference: np.ndarray) -> float:
    return metrics(candidate, reference).rel_l2


def ambiguous_routing(candidate: np.ndarray, reference: np.ndarray, candidate_logits: np.ndarray,
                      reference_logits: np.ndarray, bias: np.ndarray | None = None, eps: float = 0.0) -> bool:
    """Whether a disagreement in ``expert_weights`` is a near-tie of the reference's own top-k, not a divergence.

    ``reference``/``candidate`` are ``[tokens, experts]`` routing weights (zero where not chosen), beside each
    side's router logits. A token's logits that differ by at most ``d`` in any one logit move the gap between
    two experts by at most ``2 d``: the candidate may swap an expert the reference chose for one it did not only
    where the reference's gap between them is within that, for the ``d`` its own logits show. True when the
    chosen experts differ and every expert chosen on one side only is such a swap. ``d`` is never taken below
    the logits' rounding at the dtype under test (unit roundoff ``eps``): an engine may choose from logits
    rounded otherwise than those it hands on.

    A router with a correction ``bias`` (GLM-4-MoE's, DeepSeek-V3's) chooses by ``sigmoid(logits) + bias``: the
    gaps are those scores', which move by at most a quarter of the logits (sigmoid's slope). Only where the
    reference chose by the order of what it chooses by: expert groups may leave out an expert above a chosen
    one, and there a near-tie says nothing of the choice. An engine that drops the bias, or applies it to the
    weights instead, swaps experts the bias moved: their gaps are the bias's, far above what its logits'
    differences explain.
    """
    chosen_ref, chosen_cand = reference != 0, candidate != 0
    differ = (chosen_ref != chosen_cand).any(axis=1)
    if not differ.any():
        return False
    keys = reference_logits.astype(np.float64)
    moved = np.maximum(np.abs(candidate_logits.astype(np.float64) - keys), eps * np.abs(keys)).max(axis=1)
    if bias is not None:
        keys, moved = 1 / (1 + np.exp(-keys)) + bias.astype(np.float64), moved / 4
    for token in np.flatnonzero(differ):
        row, chosen, other, noise = keys[token], chosen_ref[token], chosen_cand[token], 2 * moved[token]
        if chosen.all() or not chosen.any():
            return False
        last_in, first_out = row[chosen].min(), row[~chosen].max()
        if first_out > last_in + noise:  # chosen against the order of what it chooses by
            return False
        if (row[other & ~chosen] < last_in - noise).any() or (row[chosen & ~other] > first_out + noise).any():
            return False
    return True


def compare(candidate: Tensors, reference: Tensors, floors: Mapping[str, float], dtype: str,
            factor: float = 1.0, selection_bias: Mapping[int, np.ndarray] | None = None,
            ) -> tuple[list[TensorRow], Divergence | None, list[str]]:
    """Compare every canonical tensor of ``candidate`` with ``reference``.

    ``floors`` gives each tensor's noise floor (see :mod:`parity.tolerance`);
    ``factor`` widens the band for comparisons where both sides carry error;
    ``selection_bias``, each layer's router correction bias where the router has one (see
    :func:`ambiguous_routing`).
    Returns the rows in execution order, the first divergence, and notes.
    Decode steps are compared only until the two sides first fed different tokens, and a prompt only until its
    routing disagrees on a near-tie of the reference's top-k (see :func:`ambiguous_routing`), within the band
    or not: a token routed to another expert on a near-tie moves the MoE output past any band, and every
    tensor after it.
    """
    biases = selection_bias or {}
    rows: list[TensorRow] = []
    notes: list[str] = []
    missing = sorted(k for k in reference if k not in candidate)
    if missing:
        raise ValueError(f"backend produced no {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    first: Divergence | None = None
    near_ties: dict[int, str] = {}  # prompt -> where its routing became ambiguous
    agreed: set[str] = set()  # keys within their band: a routing near-tie needs its router logits among them
    parted = parting_steps(candidate, reference)
    unfed: set[tuple[int, int]] = set()  # (step, prompt) fed other tokens than the reference's
    for key in sorted((k for k in reference if not k.endswith(schema.TOKEN_IDS)), key=_order):
        step, prompt, name = schema.parse_key(key)
        kind, layer = schema.parse_name(name)
        comparable = step < parted.get(prompt, step + 1)
        m = metrics(candidate[key], reference[key])
        limit = factor * tolerance.band(floors[key], dtype)
        if not comparable:
            verdict = "skipped"
            unfed.add((step, prompt))
        elif prompt in near_ties:
            verdict = "skipped"
        elif kind == schema.ROUTING and _logits(key) in agreed and ambiguous_routing(
                candidate[key], reference[key], candidate[_logits(key)], reference[_logits(key)], biases.get(layer),
                tolerance.EPS[dtype]):
            verdict = "skipped"
            near_ties[prompt] = f"step {step} prompt {prompt} {name}"
        elif not tolerance.within(m.rel_l2, limit, m.non_finite):
            verdict = "propagated" if first else "diverged"
        else:
            verdict = "ok"
            agreed.add(key)
        row = TensorRow(step=step, prompt=prompt, tensor=name, kind=kind, layer=layer, floor=floors[key], band=limit,
                        verdict=verdict, **m.model_dump())
        rows.append(row)
        if verdict == "diverged":
            first = Divergence(tensor=name, kind=kind, layer=layer, step=step, prompt=prompt,
                               reason="non-finite" if m.non_finite else "exceeds noise floor", band=limit,
                               per_token=per_token(candidate[key], reference[key]), **m.model_dump())
    if unfed:
        notes.append("decode inputs differ from the reference (greedy tokens disagree) at "
                     + ", ".join(f"step {s} prompt {p}" for s, p in sorted(unfed)) + "; those steps were not compared")
    if near_ties:
        notes.append("routing disagrees only where the reference's own top-k is a near-tie (margin within the "
                     "router logits' noise) at " + ", ".join(near_ties.values())
                     + "; those prompts were not compared from there on")
    return rows, first, notes


Trajectory = tuple[tuple[int, ...], ...]
"""Per prompt, the token fed at each decode step 1..n: a greedy run's own choices."""


def decode_tokens(tensors: Tensors, prompts: int, steps: int) -> Trajectory | None:
    """The trajectory a capture was fed; None where it lacks a step's ids (a capture that broke the schema)."""
    try:
        return tuple(tuple(int(tensors[schema.key(s, p, schema.TOKEN_IDS)][0]) for s in range(1, steps + 1))
                     for p in range(prompts))
    except (KeyError, IndexError):
        return None


def _logits(routing_key: str) -> str:
    """The router logits key beside an ``expert_weights`` key."""
    step, prompt, name = schema.parse_key(routing_key)
    return schema.key(step, prompt, schema.layer_name(schema.parse_name(name).layer, "router_logits"))


def parting_steps(a: Tensors, b: Tensors) -> dict[int, int]:
    """Per prompt, the first decode step at which ``a`` and ``b`` fed different tokens. From there on the two
    sequences' contexts differ, even at a later step that happens to feed the same token again."""
    parted: dict[int, int] = {}
    for key in b:  # every key of ``b`` is in ``a`` (compare checks the candidate has the reference's)
        if key.endswith(schema.TOKEN_IDS) and not np.array_equal(a[key], b[key]):
            step, prompt, _ = schema.parse_key(key)
            parted[prompt] = min(step, parted.get(prompt, step))
    return parted


def floors(low: Tensors, exact: Tensors) -> dict[str, float]:
    """Noise floor per tensor: the reference's own relative error at the dtype under test; for routing
    weights, at least the error the router logits' own error accounts for (:func:`routing_floor`).

    Where the low-precision reference's decode inputs differ from fp64's (an
    argmax near-tie), the floor is unknown and set to infinity from that step on.
    """
    out: dict[str, float] = {}
    parted = parting_steps(low, exact)
    for key, ref in exact.items():
        if key.endswith(schema.TOKEN_IDS):
            continue
        step, prompt, name = schema.parse_key(key)
        if step >= parted.get(prompt, step + 1):
            out[key] = float("inf")
            continue
        out[key] = metrics(low[key], ref).rel_l2
        if schema.parse_name(name).kind == schema.ROUTING:
            out[key] = max(out[key], routing_floor(low[_logits(key)], exact[_logits(key)]))
    return out


def routing_floor(low_logits: np.ndarray, exact_logits: np.ndarray) -> float:
    """The relative error in routing weights that an error in the router logits accounts for.

    Every routing function parity compares (softmax or sigmoid scores, renormalised over the chosen experts or
    not, times a constant scale) moves weight ``w_i``, to first order, by ``w_i (dl_i - c)`` where ``c`` is a
    weighted mean of the logits' errors ``dl``: so a weights tensor's relative L2 error is at most ``2 max |dl|``.
    The weights' own measured error is no floor on its own: a decode token's few chosen weights can come out
    nearly exact by chance where their logits' errors happen to agree (renormalised weights see only the
    differences), and an engine whose logits are as close is then 10 times off it (vLLM's Qwen2-MoE, 1.3e-6
    against a measured 9.7e-8, with logits 1.0e-6 off against the reference's own 5.3e-7)."""
    return 2 * float(np.abs(low_logits.astype(np.float64) - exact_logits).max(initial=0.0))


def _order(key: str) -> tuple[int, tuple[int, int], int]:
    step, prompt, name = schema.parse_key(key)
    return step, schema.execution_order(name), prompt
