"""The regression gate: is a candidate run worse than a baseline run of the same examples?

Both reports must come from the same dtype, device and profile (otherwise their
examples and bands are not comparable, :class:`ReportMismatch`) and share at
least one (example, backend) result. Examples, and backends of an example,
present on one side only are listed, never judged.

The rule, for each (example, backend) present on both sides — including
engine-vs-engine results ``a~b`` — and each run judged by its own bands:

* **regressed** when the baseline passed and the candidate diverged or errored;
* **regressed** when a tensor (same step, prompt and name, compared on both
  sides) is outside its band in the candidate, and in the baseline it was
  inside its band or its error has since grown by more than
  :data:`parity.tolerance.FLOOR_FACTOR`: the factor that separates a correct
  backend's error from the band also separates noise from a real change;
* **improved** when the baseline diverged or errored and the candidate passes.

A tensor error that stays inside its band never regresses, however it moves. A
result that passed and is now unsupported is noted, not failed: dropping an
architecture is a decision, not a numerical regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parity import tolerance
from parity.records import BackendResult, Report, TensorRow
from parity.tables import cell, step_name


class ReportMismatch(ValueError):
    """The two reports cannot be compared (exit code 2)."""


@dataclass(frozen=True)
class Change:
    example: str
    description: str
    backend: str
    was: str
    now: str
    tensor: str | None
    """The earliest regressed tensor in execution order, if a tensor regressed."""
    detail: str


@dataclass
class GateResult:
    compared: int = 0
    """(example, backend) results judged."""
    regressions: list[Change] = field(default_factory=list)
    improvements: list[Change] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_candidate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)


def tensor_regressed(base: TensorRow, cand: TensorRow) -> bool:
    """The tensor rule of the module docstring, for one tensor compared on both sides."""
    if "skipped" in (base.verdict, cand.verdict) or tolerance.within(cand.rel_l2, cand.band, cand.non_finite):
        return False
    return (tolerance.within(base.rel_l2, base.band, base.non_finite)
            or cand.rel_l2 > tolerance.FLOOR_FACTOR * base.rel_l2)


def gate(baseline: Report, candidate: Report) -> GateResult:
    _check_comparable(baseline, candidate)
    base = {ex.id: ex for ex in baseline.examples}
    cand = {ex.id: ex for ex in candidate.examples}
    common = [i for i in base if i in cand]
    if not common:
        raise ReportMismatch("the reports share no example; gate two runs of the same examples "
                             "(same --arch, --profile and --seed, or replays of the baseline's examples)")
    result = GateResult(only_baseline=[i for i in base if i not in cand],
                        only_candidate=[i for i in cand if i not in base])
    for side, rep in (("baseline", baseline), ("candidate", candidate)):
        if not rep.complete:
            result.notes.append(f"the {side} run is incomplete")
    for ex_id in common:
        b_results = {r.backend: r for r in base[ex_id].results}
        c_results = {r.backend: r for r in cand[ex_id].results}
        for side, mine, other in (("baseline", b_results, c_results), ("candidate", c_results, b_results)):
            result.notes += [f"{ex_id}: backend {label} only in the {side}" for label in mine if label not in other]
        for label in (lbl for lbl in b_results if lbl in c_results):
            result.compared += 1
            _judge(result, ex_id, base[ex_id].description, b_results[label], c_results[label])
    if not result.compared:
        # Otherwise a relabelled backend (vllm@base vs vllm@pr) would pass the gate having judged nothing.
        raise ReportMismatch(f"no backend label in common (baseline: {', '.join(_labels(baseline))}; candidate: "
                             f"{', '.join(_labels(candidate))}); run both with the same --backend label")
    return result


def _labels(report: Report) -> list[str]:
    return list(dict.fromkeys(r.backend for ex in report.examples for r in ex.results))


def _check_comparable(baseline: Report, candidate: Report) -> None:
    differ = [f"{name} {getattr(baseline, name)!r} vs {getattr(candidate, name)!r}"
              for name in ("dtype", "device", "profile") if getattr(baseline, name) != getattr(candidate, name)]
    if differ:
        raise ReportMismatch("baseline and candidate were run differently (" + "; ".join(differ)
                             + "); their bands and examples are not comparable: re-run one with the other's settings")


def _judge(result: GateResult, ex_id: str, description: str, b: BackendResult, c: BackendResult) -> None:
    def change(tensor: str | None, detail: str) -> Change:
        return Change(ex_id, description, b.backend, b.status, c.status, tensor, detail)

    failing = ("diverged", "error")
    rows = {(r.step, r.prompt, r.tensor): r for r in b.rows}
    worse = next((r for r in c.rows if (r.step, r.prompt, r.tensor) in rows
                  and tensor_regressed(rows[(r.step, r.prompt, r.tensor)], r)), None)
    if worse is not None:
        old = rows[(worse.step, worse.prompt, worse.tensor)]
        result.regressions.append(change(worse.tensor, f"{step_name(worse.step)}, prompt {worse.prompt}: "
                                         f"rel. L2 {old.rel_l2:.1e} → {worse.rel_l2:.1e} (band {worse.band:.1e})"))
    elif b.status == "pass" and c.status in failing:
        d = c.first_divergence
        result.regressions.append(change(d.tensor if d else None,
                                         d.reason if d else (c.reason or "").splitlines()[0][:200]))
    elif b.status in failing and c.status == "pass":
        result.improvements.append(change(None, "" if c.max_rel_l2 is None else f"max rel. L2 now {c.max_rel_l2:.1e}"))
    elif b.status == "pass" and c.status == "unsupported":
        result.notes.append(f"{ex_id}: {b.backend} passed and is now unsupported: {c.reason}")


def render(result: GateResult, baseline: str = "baseline", candidate: str = "candidate") -> str:
    """The verdict as short Markdown, naming each regressed example."""
    if result.regressed:
        head = f"## parity gate: regression ({len(result.regressions)} of {result.compared} results)"
    else:
        head = (f"## parity gate: no regression ({result.compared} results compared"
                + (f", {len(result.improvements)} improved)" if result.improvements else ")"))
    lines = [head, "", f"Baseline `{baseline}`, candidate `{candidate}`."]
    if result.regressions:
        lines += ["", "| example | description | backend | was → now | tensor | detail |", "|---" * 6 + "|"]
        lines += [f"| `{c.example}` | {c.description} | {c.backend} | {c.was} → {c.now} | "
                  f"{f'`{c.tensor}`' if c.tensor else ''} | {cell(c.detail)} |"
                  for c in result.regressions]
    if result.improvements:
        lines += ["", "Improved: " + "; ".join(f"`{c.example}` {c.backend} ({c.was} → {c.now})"
                                               for c in result.improvements)]
    for side, ids in (("baseline", result.only_baseline), ("candidate", result.only_candidate)):
        if ids:
            lines += ["", f"Only in the {side} (not judged): " + ", ".join(f"`{i}`" for i in ids)]
    if result.notes:
        lines += ["", *(f"- {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"
