"""Judging one example: captured activations in, results out. Pure: no workers, no files.

Every backend is compared with the fp64 reference, and every pair of backends
with each other (a wider band: both sides carry error). Decode steps are compared
along the tokens the backend fed: where its greedy tokens differ from the
reference's, against the reference teacher-forced along them (``Captures.forced``),
so a near-tie in the argmax costs no step. Which known engine issues may explain a
divergence or an error is found here too, from the engines' names and versions,
the example's config and the symptom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Mapping, Sequence

from parity import compare, known_issues, schema
from parity.compare import Tensors, Trajectory
from parity.records import BackendResult, DecodeTrajectory, Divergence
from parity.tolerance import PAIR_FACTOR


@dataclass(frozen=True)
class Reference:
    """The fp64 reference along one decode trajectory, and each tensor's noise floor along it."""

    exact: Tensors
    floors: Mapping[str, float]
    tokens: Trajectory | None
    """The tokens it fed at decode steps (None: not known, nothing teacher-forced)."""


@dataclass(frozen=True)
class Captures:
    reference: Reference
    """The reference along its own greedy tokens: the truth every backend is compared with."""

    backends: Mapping[str, Tensors]
    """Backend label -> its canonical tensors, for the backends that produced them."""

    forced: Mapping[str, Reference] = field(default_factory=dict)
    """Backend label -> the reference teacher-forced along that backend's greedy tokens, for the
    backends whose tokens differ from the reference's own."""

    routers: Mapping[int, compare.Router] = field(default_factory=dict)
    """Layer -> how its router chooses, for routers that choose experts by their sigmoid scores plus a bias,
    within groups (GLM-4-MoE, DeepSeek-V3): what a near-tie of their choice is judged on
    (``compare.ambiguous_routing``)."""

    def along(self, name: str) -> Reference:
        return self.forced.get(name, self.reference)


@dataclass(frozen=True)
class Outcome:
    """One result of an example, and the backends it is about."""

    backends: tuple[str, ...]
    """One label for a comparison with the reference, two for an engine-vs-engine comparison."""

    result: BackendResult


def parted(reference: Trajectory | None, backends: Mapping[str, Tensors], prompts: int, steps: int,
           vocab_size: int) -> dict[str, Trajectory]:
    """Backend label -> its own greedy tokens, for each backend fed other tokens than ``reference`` at some decode
    step: the trajectories along which to teacher-force the reference (``Captures.forced``). A capture that broke
    the schema (no ids, or ids off the vocabulary) is left out, and judged as it is."""
    out = {}
    for name, tensors in backends.items():
        tokens = compare.decode_tokens(tensors, prompts, steps)
        if tokens is not None and tokens != reference and all(0 <= t < vocab_size for t in sum(tokens, ())):
            out[name] = tokens
    return out


def label(backends: tuple[str, ...]) -> str:
    """The result's name in the report: the backend, or ``a~b`` for a pair."""
    return "~".join(backends)


def _result(name: str, candidate: Tensors, reference: Tensors, floors: Mapping[str, float], dtype: str,
            factor: float, trajectory: DecodeTrajectory, notes: list[str],
            routers: Mapping[int, compare.Router]) -> BackendResult:
    try:
        rows, first, skipped = compare.compare(candidate, reference, floors, dtype, factor, routers)
    except ValueError as exc:  # tensors missing or misshapen: the backend broke the schema
        return BackendResult(backend=name, status="error", reason=str(exc))
    compared = [r.rel_l2 for r in rows if r.verdict != "skipped"]
    return BackendResult(backend=name, status="diverged" if first else "pass", first_divergence=first,
                         max_rel_l2=max(compared) if compared else None, trajectory=trajectory,
                         notes=notes + skipped, rows=rows)


def _parted(own: Trajectory, reference: Trajectory) -> str:
    """Where two trajectories first part, in words."""
    step, prompt = min((s + 1, p) for p, (a, b) in enumerate(zip(own, reference))
                       for s, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"decode step {step} prompt {prompt}"


def judge(captures: Captures, dtype: str) -> list[Outcome]:
    """Each backend against the reference along its own tokens, then each pair of backends that fit the
    schema against each other (along the tokens they share; steps where theirs differ are not compared)."""
    outcomes = []
    for name, tensors in captures.backends.items():
        ref = captures.along(name)
        own = name in captures.forced
        notes = [f"greedy tokens differ from the reference's from {_parted(ref.tokens, captures.reference.tokens)} "
                 f"on; the reference was teacher-forced along this backend's tokens"] if own else []
        outcomes.append(Outcome((name,), _result(name, tensors, ref.exact, ref.floors, dtype, 1.0,
                                                 "own" if own else "reference", notes, captures.routers)))
    fit = [o.backends[0] for o in outcomes if o.result.status != "error"]
    for a, b in combinations(fit, 2):
        ref_a, ref_b = captures.along(a), captures.along(b)
        trajectory: DecodeTrajectory = ("split" if ref_a.tokens != ref_b.tokens
                                        else "own" if ref_a is not captures.reference else "reference")
        ref = ref_a if trajectory != "split" else captures.reference
        outcomes.append(Outcome((a, b), _result(label((a, b)), captures.backends[a], captures.backends[b],
                                                ref.floors, dtype, PAIR_FACTOR, trajectory, [],
                                                captures.routers)))
    return outcomes


def candidates(outcome: Outcome, engines: Mapping[str, tuple[str, str]], arch: str,
               config: Mapping[str, Any], prompt_lengths: Sequence[int]) -> list[known_issues.Match]:
    """The known engine issues that may explain the outcome, by its engines, config and symptom (the first
    divergence's kind and where it starts, or the error's message), then the misreadings that act on its config
    whatever the symptom (:func:`parity.known_issues.confirmable`); see :mod:`parity.diagnosis` for which one
    does.

    ``engines`` maps a backend label to its engine's name and version.
    """
    r = outcome.result
    kind = r.first_divergence.kind if r.first_divergence else "error" if r.status == "error" else None
    if kind is None:
        return []
    versions = [engines[b] for b in outcome.backends]
    if kind == "error":
        return known_issues.matches(versions, arch, config, kind, r.reason or "")
    position = divergence_position(r.first_divergence, prompt_lengths)
    return [*known_issues.matches(versions, arch, config, kind, position=position),
            *known_issues.confirmable(versions, arch, config, kind, position)]


def inherit(pair: BackendResult, sides: Sequence[BackendResult]) -> BackendResult:
    """A pair's divergence that no known issue of its own explains, explained by a side's known divergence from the
    reference that starts no later (step, then execution order): the engines part because that side's known bug
    did, which the pair band (twice a side's) can absorb at its first tensor and not further on (a bf16 nightly:
    vLLM's Qwen3-MoE o_proj bias bug at 0.087 of attn_out, over its band of 0.078 and within the pair's 0.156,
    read as a new divergence of the pair at step 1's router_logits)."""
    d = pair.first_divergence
    if pair.status != "diverged" or pair.known_issue or d is None:
        return pair
    for side in sides:
        s = side.first_divergence
        if side.status == "diverged" and side.known_issue and s is not None and \
                (s.step, schema.execution_order(s.tensor)) <= (d.step, schema.execution_order(d.tensor)):
            note = f"explained by {side.backend}'s own known divergence from the reference at {s.tensor} (step {s.step})"
            return pair.model_copy(update={"known_issue": side.known_issue, "diagnosis": side.diagnosis,
                                           "notes": [*pair.notes, note]})
    return pair


def divergence_position(d: Divergence | None, prompt_lengths: Sequence[int]) -> int | None:
    """The sequence position where a divergence starts: at prefill its first token past the band, at a decode
    step the position of the token it fed; None where that is not known."""
    if d is None:
        return None
    if d.step:
        return prompt_lengths[d.prompt] + d.step - 1
    return next((i for i, error in enumerate(d.per_token) if error > d.band), None)
