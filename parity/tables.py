"""What the Markdown and HTML reports and the gate's verdict show alike: step names, table
cells, and known engine issues set apart from new failures.

A result that a known engine issue explains keeps its status in report.json; shown,
it moves out of the diverged and error columns into its own, so a run whose only
divergences are known engine bugs does not read as failing.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.records import BackendResult, Report

KNOWN = "known issue"
COLUMNS: tuple[str, ...] = ("pass", "diverged", "error", KNOWN, "unsupported")
"""Summary columns: the statuses, with known engine issues taken out of diverged and error."""


def step_name(step: int) -> str:
    return "prefill" if step == 0 else f"decode step {step}"


TRAJECTORIES = {
    "reference": "the reference's own greedy tokens",
    "own": "its own greedy tokens, which differ from the reference's (the reference teacher-forced along them)",
    "split": "the tokens both backends fed; steps after their greedy tokens part are not compared",
}
"""What each ``BackendResult.trajectory`` means, in words."""


def trajectory_line(report: Report) -> str | None:
    """How many results were compared along tokens other than the reference's own, or None if none were."""
    counts = {t: sum(r.trajectory == t for ex in report.examples for r in ex.results) for t in ("own", "split")}
    if not any(counts.values()):
        return None
    return (f"Decode steps: {counts['own']} results compared along the backend's own greedy tokens (they differ from "
            f"the reference's; the reference was teacher-forced along them), {counts['split']} engine pairs whose "
            f"tokens part (steps after that not compared between them)")


def cell(text: str) -> str:
    """Text made safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def shown_status(result: BackendResult) -> str:
    return KNOWN if result.known_issue else result.status


def shown_counts(counts: dict[str, int], known: dict[str, int]) -> dict[str, int]:
    """Status counts (a row of ``Summary.by_backend`` or ``by_arch``, and its row of known ones) by :data:`COLUMNS`."""
    return {col: sum(known.values()) if col == KNOWN else counts.get(col, 0) - known.get(col, 0) for col in COLUMNS}


@dataclass(frozen=True)
class KnownIssueSeen:
    diagnosis: str
    archs: tuple[str, ...]
    backends: tuple[str, ...]
    results: int
    confirmed: int
    """Results whose engine agreed with the reference run on the checkpoint as the issue says it reads it."""

    @property
    def where(self) -> str:
        tested = ("all confirmed" if self.confirmed == self.results else
                  f"{self.confirmed} confirmed" if self.confirmed else "matched, nothing to test")
        return (f"{', '.join(self.archs)} on {', '.join(self.backends)} "
                f"({self.results} result{'' if self.results == 1 else 's'}, {tested})")


def known_issues_seen(report: Report) -> list[KnownIssueSeen]:
    """Each known engine issue the report holds and where it showed, in order of first appearance."""
    hits: dict[str, list[tuple[str, str, bool]]] = {}
    for ex in report.examples:
        for r in ex.results:
            if r.known_issue:
                hits.setdefault(r.known_issue, []).append((ex.arch, r.backend, r.diagnosis == "confirmed"))
    return [KnownIssueSeen(diagnosis, tuple(dict.fromkeys(a for a, _, _ in h)),
                           tuple(dict.fromkeys(b for _, b, _ in h)), len(h), sum(c for _, _, c in h))
            for diagnosis, h in hits.items()]


def verdict(report: Report) -> str:
    s = report.summary
    if s.failing:
        return f"{len(s.failing)} of {s.examples} examples fail"
    known = len(known_issues_seen(report))
    return f"no failure in {s.examples} examples" + (f" ({known} known engine issues)" if known else "")


def surface_line(arch: str, report: Report) -> str:
    """One family's config-surface coverage in words (``parity surface``)."""
    c = report.surface[arch]
    text = f"{c.coverage:.0%} ({c.varied} of {c.changing} keys that change the output are varied"
    if c.exercised is not None:
        text += f", {len(c.exercised)} of them exercised by this run"
    if c.pinned:
        text += "; pinned: " + ", ".join(c.pinned)
    if c.unclassified:
        text += "; BLIND SPOTS: " + ", ".join(c.unclassified)
    return text + ")"
