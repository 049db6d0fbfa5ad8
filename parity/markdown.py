"""Markdown rendering of a report, sized for a PR comment: the verdict, one short
table, the first divergence of each failing example, and where the full report is."""

from __future__ import annotations

from pathlib import Path

from parity.records import BackendResult, ExampleRecord, Report
from parity.tables import (COLUMNS, cell, known_issues_seen, shown_counts, step_name, surface_line, trajectory_line,
                           verdict)

MAX_FAILURES = 10  # rows in the failure table; report.html has the rest


def render(report: Report, html: Path | None = None) -> str:
    s = report.summary
    failing = sorted((ex for ex in report.examples if ex.headline_failure), key=lambda ex: not ex.minimal)
    lines = [
        f"## parity: {verdict(report)}",
        "",
        f"Profile `{report.profile}`, {report.dtype} on {report.device}, reference transformers "
        f"{report.reference.versions.get('transformers', '?')}"
        + ("" if report.complete else " — **incomplete run**"),
        "",
        "| backend | " + " | ".join(COLUMNS) + " | max rel. L2 (passing) |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for backend, counts in s.by_backend.items():
        shown = shown_counts(counts, s.known_by_backend.get(backend, {}))
        mx = s.max_rel_l2.get(backend)
        lines.append(f"| {backend} | " + " | ".join(str(shown[col] or "") for col in COLUMNS)
                     + f" | {'' if mx is None else f'{mx:.1e}'} |")
    lines += ["", "Architectures: " + "; ".join(f"{arch} {_counts(shown_counts(c, s.known_by_arch.get(arch, {})))}"
                                                for arch, c in s.by_arch.items())]
    decode = trajectory_line(report)
    if decode:
        lines += ["", decode]
    if failing:
        rows = [(ex, r) for ex in failing for r in ex.results
                if r.status in ("diverged", "error") and not r.known_issue]
        lines += ["", "| example | backend | first divergence | rel. L2 / band |", "|---|---|---|---|"]
        lines += [_failure_row(ex, r) for ex, r in rows[:MAX_FAILURES]]
        if len(rows) > MAX_FAILURES:
            lines.append(f"| … {len(rows) - MAX_FAILURES} more | | | |")
        lines += ["", f"Replay: `{failing[0].replay}`"]
    known = known_issues_seen(report)
    if known:
        lines += ["", "Known engine issues (counted apart from diverged and error, not failing the run; "
                  "parity/known_issues.py):", ""]
        lines += [f"- {k.where}: {k.diagnosis}" for k in known]
    if report.surface:
        lines += ["", "Config surface (`parity surface`, transformers "
                  f"{next(iter(report.surface.values())).transformers}): "
                  + "; ".join(f"{arch} {surface_line(arch, report)}" for arch in report.surface)]
    if html is not None:
        lines += ["", f"Per-layer plots, heatmaps and per-token errors: `{html}`"]
    versions = "; ".join(f"{b.label}: " + ", ".join(f"{k} {v}" for k, v in b.versions.items()) for b in report.backends)
    if s.coverage:
        lines += ["", "<details><summary>coverage: knob values exercised</summary>", ""]
        lines += [f"- **{arch}**: " + "; ".join(f"{knob} " + ", ".join(f"{v} ({n})" for v, n in sorted(vals.items()))
                                              for knob, vals in knobs.items())
                  for arch, knobs in s.coverage.items()]
        lines += ["", "</details>"]
    reuse = reuse_line(report)
    if reuse:
        lines += ["", reuse]
    lines += ["", "<details><summary>versions and command</summary>", "", versions, "",
              f"`{report.command}`", "", "</details>", ""]
    return "\n".join(lines)


def reuse_line(report: Report) -> str | None:
    """How many of each engine's loads were weights reloaded into the engine held from the previous example;
    None where no engine reports a load."""
    loads: dict[str, list[int]] = {}
    for ex in report.examples:
        for r in ex.results:
            if "load" in r.seconds:
                counts = loads.setdefault(r.backend, [0, 0])
                counts[0] += r.reused
                counts[1] += 1
    if not loads:
        return None
    return ("Engines reused (weights reloaded into the engine of the previous example, same structure): "
            + "; ".join(f"{backend} {n} of {total} loads" for backend, (n, total) in loads.items()))


def _counts(shown: dict[str, int]) -> str:
    return ", ".join(f"{n} {col}" for col, n in shown.items() if n)


def _failure_row(ex: ExampleRecord, r: BackendResult) -> str:
    name = f"{ex.description}{' **(minimal)**' if ex.minimal else ''}"
    d = r.first_divergence
    if d is None:
        return f"| {name} | {r.backend} | {r.status}: {cell((r.reason or '').splitlines()[0][:120])} | |"
    return (f"| {name} | {r.backend} | `{d.tensor}` ({step_name(d.step)}, prompt {d.prompt}, token {d.worst_token}) "
            f"| {d.rel_l2:.1e} / {d.band:.1e} |")
