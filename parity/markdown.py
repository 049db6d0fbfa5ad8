"""Markdown rendering of a report: short enough for a PR comment."""

from __future__ import annotations

from parity.report import ExampleRecord, Report


def _status_cell(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def render(report: Report) -> str:
    s = report.summary
    lines = [
        "# parity report",
        "",
        f"{s.examples} examples, profile `{report.profile}`, {report.dtype} on {report.device}, "
        f"reference transformers {report.reference.versions.get('transformers', '?')}"
        + ("" if report.complete else " — **incomplete run**"),
        "",
        "| backend | results | max rel. L2 (passing) |",
        "|---|---|---|",
    ]
    for backend, counts in s.by_backend.items():
        mx = s.max_rel_l2.get(backend)
        lines.append(f"| {backend} | {_status_cell(counts)} | {'' if mx is None else f'{mx:.2e}'} |")
    lines += ["", "| architecture | results |", "|---|---|"]
    lines += [f"| {arch} | {_status_cell(counts)} |" for arch, counts in s.by_arch.items()]
    failing = [ex for ex in report.examples if ex.failed and ex.role != "shrink"]
    if failing:
        lines += ["", "## Failures", "", "| example | backend | status | first divergence | rel. L2 / band | replay |",
                  "|---|---|---|---|---|---|"]
        for ex in failing:
            lines += _failure_rows(ex)
    versions = "; ".join(f"{b.label}: " + ", ".join(f"{k} {v}" for k, v in b.versions.items()) for b in report.backends)
    lines += ["", f"Versions — {versions}", "", f"Command: `{report.command}`", ""]
    return "\n".join(lines)


def _failure_rows(ex: ExampleRecord) -> list[str]:
    out = []
    name = ex.description + (" **(minimal)**" if ex.minimal else "")
    for r in ex.results:
        if r.status not in ("diverged", "error"):
            continue
        d = r.first_divergence
        where = (f"`{d.tensor}` ({'prefill' if d.step == 0 else f'decode {d.step}'}, prompt {d.prompt}, token {d.worst_token})"
                 if d else (r.reason or "").splitlines()[0][:120])
        ratio = f"{d.rel_l2:.2e} / {d.band:.1e}" if d else ""
        out.append(f"| {name} | {r.backend} | {r.status} | {where} | {ratio} | `{ex.replay}` |")
    return out
