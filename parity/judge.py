"""Judging one example: captured activations in, results out. Pure: no workers, no files.

Every backend is compared with the fp64 reference, and every pair of backends
with each other (a wider band: both sides carry error). Which known engine issues
may explain a divergence or an error is found here too, from the engines' names
and versions, the example's config and the symptom.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping

from parity import compare, known_issues
from parity.compare import Tensors
from parity.records import BackendResult
from parity.tolerance import PAIR_FACTOR


@dataclass(frozen=True)
class Captures:
    reference: Tensors
    """The fp64 reference: the truth every backend is compared with."""

    backends: Mapping[str, Tensors]
    """Backend label -> its canonical tensors, for the backends that produced them."""


@dataclass(frozen=True)
class Outcome:
    """One result of an example, and the backends it is about."""

    backends: tuple[str, ...]
    """One label for a comparison with the reference, two for an engine-vs-engine comparison."""

    result: BackendResult


def label(backends: tuple[str, ...]) -> str:
    """The result's name in the report: the backend, or ``a~b`` for a pair."""
    return "~".join(backends)


def _result(name: str, candidate: Tensors, reference: Tensors, floors: Mapping[str, float], dtype: str,
            factor: float) -> BackendResult:
    try:
        rows, first, notes = compare.compare(candidate, reference, floors, dtype, factor)
    except ValueError as exc:  # tensors missing or misshapen: the backend broke the schema
        return BackendResult(backend=name, status="error", reason=str(exc))
    compared = [r.rel_l2 for r in rows if r.verdict != "skipped"]
    return BackendResult(backend=name, status="diverged" if first else "pass", first_divergence=first,
                         max_rel_l2=max(compared) if compared else None, notes=notes, rows=rows)


def judge(captures: Captures, floors: Mapping[str, float], dtype: str) -> list[Outcome]:
    """Each backend against the reference, then each pair of backends that fit the schema against each other."""
    outcomes = [Outcome((name,), _result(name, tensors, captures.reference, floors, dtype, 1.0))
                for name, tensors in captures.backends.items()]
    fit = [o.backends[0] for o in outcomes if o.result.status != "error"]
    for a, b in combinations(fit, 2):
        outcomes.append(Outcome((a, b), _result(label((a, b)), captures.backends[a], captures.backends[b], floors,
                                                dtype, PAIR_FACTOR)))
    return outcomes


def candidates(outcome: Outcome, engines: Mapping[str, tuple[str, str]], arch: str,
               config: Mapping[str, Any]) -> list[known_issues.Match]:
    """The known engine issues that may explain the outcome, by its engines, config and symptom (the first
    divergence's kind, or the error's message); see :mod:`parity.diagnosis` for which one does.

    ``engines`` maps a backend label to its engine's name and version.
    """
    r = outcome.result
    kind = r.first_divergence.kind if r.first_divergence else "error" if r.status == "error" else None
    if kind is None:
        return []
    return known_issues.matches([engines[b] for b in outcome.backends], arch, config, kind, r.reason or "")
