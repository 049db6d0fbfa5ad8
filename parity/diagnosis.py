"""Known-issue diagnoses put to the test, not just matched.

A known issue that says how an engine misreads the checkpoint (``KnownIssue.reads_as``,
``ignores``) makes a prediction: the engine agrees, within the band, with the
reference run on the checkpoint read that way. One config often trips several of
an engine's known misreadings at once, so the prediction tested is the engine's:
the checkpoint read as every known issue of that engine that applies to it says,
and the run compared end to end.

- The engine agrees: its known issues explain the result (``confirmed``).
- It does not, and none of its applicable issues leaves anything untested: the
  result fits the entries' configs and symptoms but not their prediction. It is a
  different bug and stays a failure, with a note saying which diagnosis was refuted
  and where the engine still diverged.
- It does not, but an applicable issue has nothing to test (a dropped bias, an op
  the port lacks) and may account for the rest: the result is explained by
  matching alone (``matched``), as it is when nothing at all can be tested.

A misreading confirmed this way explains the result whatever tensor first crossed
its band (which depends on the dtype's bands: a scale inside q's band shows first
at the attention output); an entry with nothing to test explains only the
symptoms it names.

Pure: running the reference and comparing is handed in as ``test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from parity.known_issues import KnownIssue, Match
from parity.records import BackendResult


@dataclass(frozen=True)
class Verdict:
    """What testing one engine's known issues on one example showed."""

    status: Literal["confirmed", "matched", "refuted"]
    note: str = ""


def verdict(applicable: list[Match], test: Callable[[list[KnownIssue]], str | None]) -> Verdict:
    """The verdict on one engine's known issues that apply to the example's config.

    ``test`` runs the reference on the checkpoint as the issues say the engine reads it and returns None when
    the engine agrees with it, otherwise where it does not.
    """
    testable = [m.issue for m in applicable if m.issue.testable]
    untestable = [m for m in applicable if not m.issue.testable]
    if not testable:
        return Verdict("matched")
    why = test(testable)
    if why is None:
        return Verdict("confirmed")
    tested = "; ".join(_headline(m) for m in applicable if m.issue.testable)
    if untestable:
        return Verdict("matched", f"the known issues could not be confirmed ({why}) with one that has nothing to "
                                  f"test also applying: {_headline(untestable[0])}")
    return Verdict("refuted", f"not a known {applicable[0].engine} issue: {why} (tested: {tested})")


def diagnose(result: BackendResult, found: list[Match], verdicts: Callable[[Match], Verdict]) -> BackendResult:
    """``result`` with the first of ``found`` (the known issues matching its config, by symptom first) whose
    engine's verdict stands, confirmed for an entry of another symptom; none when none stands."""
    notes = list(result.notes)
    for match in found:
        v = verdicts(match)
        if not match.symptom:  # another symptom than the entry's: only the engine's agreement explains it
            if v.status == "confirmed":
                return result.model_copy(update={"known_issue": match.text, "diagnosis": v.status, "notes": notes})
            continue
        if v.note and v.note not in notes:
            notes.append(v.note)
        if v.status != "refuted":
            return result.model_copy(update={"known_issue": match.text, "diagnosis": v.status, "notes": notes})
    return result.model_copy(update={"known_issue": None, "diagnosis": None, "notes": notes})


def _headline(match: Match) -> str:
    first = match.issue.diagnosis.split(":")[0]
    return f"{match.engine} {match.issue.arch}: " + (first if len(first) <= 80 else first[:77] + "...")
