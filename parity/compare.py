"""Pure comparison of canonical activations: arrays in, typed records out, all in float64."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Router:
    """How one layer's router chooses, where it is more than the top-k of its logits (GLM-4-MoE's and
    DeepSeek-V3's): by ``sigmoid(logits) + bias``, among the experts of the ``topk_groups`` best of ``groups``
    equal groups (ranked by the sum of their two best scores), as transformers' ``noaux_tc`` routing does."""

    bias: np.ndarray
    groups: int = 1
    topk_groups: int = 1

    def choose(self, scores: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` experts chosen by one token's ``scores`` (sigmoid plus bias), as a mask."""
        if self.groups > 1:
            grouped = scores.reshape(self.groups, -1)
            best = np.sort(grouped, axis=1)[:, -2:].sum(axis=1)
            eligible = np.zeros(self.groups, dtype=bool)
            eligible[np.argsort(-best, kind="stable")[:self.topk_groups]] = True
            scores = np.where(np.repeat(eligible, grouped.shape[1]), scores, 0.0)  # transformers' masked_fill(0.0)
        return _top(scores, k)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    chosen = np.zeros(len(scores), dtype=bool)
    chosen[np.argsort(-scores, kind="stable")[:k]] = True
    return chosen


def ambiguous_routing(candidate: np.ndarray, reference: np.ndarray, candidate_logits: np.ndarray,
                      reference_logits: np.ndarray, router: Router | None = None, eps: float = 0.0) -> bool:
    """Whether a disagreement in ``expert_weights`` is a near-tie of the reference's own choice, not a divergence.

    ``reference``/``candidate`` are ``[tokens, experts]`` routing weights (zero where not chosen), beside each
    side's router logits. A token's logits that differ by at most ``d`` in any one logit may make either side's
    choice: true when, for every token whose chosen experts differ, the reference's logits moved by at most ``d``
    towards each side's experts (up for its own, down for the rest) make exactly that side's choice, for the
    ``d`` the candidate's logits show. ``d`` is never taken below the logits' rounding at the dtype under test
    (unit roundoff ``eps``): an engine may choose from logits rounded otherwise than those it hands on.

    A ``router`` (:class:`Router`) chooses by sigmoid scores plus a bias, which move by at most a quarter of the
    logits (sigmoid's slope), and within expert groups: a near-tie of two groups' sums may swap experts far
    apart. A choice this reading cannot make from the reference's logits (an engine that drops the bias, or
    applies it to the weights instead, swaps experts the bias moved, far beyond what its logits' differences
    explain), or that the reference itself did not make by it, is no near-tie.
    """
    chosen_ref, chosen_cand = reference != 0, candidate != 0
    differ = (chosen_ref != chosen_cand).any(axis=1)
    if not differ.any():
        return False
    keys = reference_logits.astype(np.float64)
    moved = np.maximum(np.abs(candidate_logits.astype(np.float64) - keys), eps * np.abs(keys)).max(axis=1)
    choose = _top
    if router is not None:
        keys, moved, choose = 1 / (1 + np.exp(-keys)) + router.bias.astype(np.float64), moved / 4, router.choose
    for token in np.flatnonzero(differ):
        k = int(chosen_ref[token].sum())
        if not 0 < k < chosen_ref.shape[1]:
            return False
        for side in (chosen_ref[token], chosen_cand[token]):
            if not (choose(keys[token] + np.where(side, 1, -1) * moved[token], k) == side).all():
                return False
    return True


def compare(candidate: Tensors, reference: Tensors, floors: Mapping[str, float], dtype: str,
            factor: float = 1.0, routers: Mapping[int, Router] | None = None,
            ) -> tuple[list[TensorRow], Divergence | None, list[str]]:
    """Compare every canonical tensor of ``candidate`` with ``reference``.

    ``floors`` gives each tensor's noise floor (see :mod:`parity.tolerance`);
    ``factor`` widens the band for comparisons where both sides carry error;
    ``routers``, each layer's :class:`Router` where it is more than the top-k of its logits (see
    :func:`ambiguous_routing`).
    Returns the rows in execution order, the first divergence, and notes.
    Decode steps are compared only until the two sides first fed different tokens, and a prompt only until its
    routing disagrees on a near-tie of the reference's top-k (see :func:`ambiguous_routing`), within the band
    or not: a token routed to another expert on a near-tie moves the MoE output past any band, and every
    tensor after it.
    """
    routers = routers or {}
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
                candidate[key], reference[key], candidate[_logits(key)], reference[_logits(key)], routers.get(layer),
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
